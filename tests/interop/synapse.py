"""Federation interop: Conduit and Synapse (the reference homeserver, from
PyPI) on loopback join each other's rooms and talk. Synapse always speaks
HTTPS to other servers, so Conduit serves TLS with a self-signed certificate
made here; Conduit reaches Synapse's plain-HTTP listener through
federation_destination_overrides. Both servers have IP-literal names, so no
DNS, .well-known or SRV is involved.

Prints 'N passed, N failed' and exits non-zero on any failure. Plain HTTP
(urllib) for the client calls: every step is one request whose answer is
checked."""

import asyncio
import io
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from harness import (
    START_TIMEOUT,
    TlsConduit,
    clean_env,
    free_ports,
    make_ca,
    opener,
    run_scenarios,
    stop,
    wait_until_up,
)

# Every wait is bounded; an event that takes longer than this to arrive is lost.
EVENT_TIMEOUT = 30


def poll(read, done, what, timeout=EVENT_TIMEOUT, interval=0.2):
    """Calls `read()` until `done(value)` holds and returns that value;
    fails after `timeout` seconds with `what` and the last value read."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}; saw {value}")
        time.sleep(interval)


def enc(s):
    return urllib.parse.quote(s, safe="")


class Client:
    """One logged-in user of a server, through the client-server API."""

    def __init__(self, base, user_id, token):
        self.base, self.user_id, self.token = base, user_id, token
        self.since = None

    def call(self, method, path, body=None, query=None, expect=200):
        url = self.base + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        status, answer = send(request)
        assert status == expect, f"{method} {path} on {self.base}: {status} {answer}"
        return answer

    def send_text(self, room_id, body):
        path = f"/_matrix/client/v3/rooms/{enc(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
        return self.call("PUT", path, {"msgtype": "m.text", "body": body})["event_id"]

    def texts(self, room_id):
        """The room's text messages, oldest first, as (sender, body)."""
        answer = self.call(
            "GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/messages", query={"dir": "b", "limit": "100"}
        )
        events = [e for e in answer["chunk"] if e.get("type") == "m.room.message"]
        return [(e["sender"], e["content"].get("body")) for e in reversed(events)]

    def wait_for_texts(self, room_id, expected, what):
        """Waits until the room's text messages are exactly `expected`
        (each once, in this order)."""
        poll(lambda: self.texts(room_id), lambda seen: seen == expected, f"{what}: {self.user_id} expected {expected}")

    def joined_members(self, room_id):
        return set(self.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/joined_members")["joined"])

    def wait_for_members(self, room_id, members, what):
        poll(
            lambda: self.joined_members(room_id), lambda seen: set(members) <= seen,
            f"{what}: {self.user_id} expected members {members}",
        )

    def sync_until(self, predicate, what):
        """Syncs (incrementally, from where the last sync ended) until
        `predicate(response)` is true."""
        deadline = time.monotonic() + EVENT_TIMEOUT
        while time.monotonic() < deadline:
            query = {"timeout": "2000"}
            if self.since:
                query["since"] = self.since
            answer = self.call("GET", "/_matrix/client/v3/sync", query=query)
            self.since = answer["next_batch"]
            if predicate(answer):
                return answer
        raise AssertionError(f"{what}: {self.user_id} never saw it")

    def catch_up(self):
        self.since = self.call("GET", "/_matrix/client/v3/sync", query={"timeout": "0"})["next_batch"]


# Everything here is on loopback: no proxy, whatever the environment says.
OPENER = opener()


def send(request, timeout=60):
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body.decode(errors="replace")


def register(base, name):
    """A new user with the dummy auth flow (both servers allow open
    registration here); returns the logged-in client."""
    body = {"username": name, "password": "pw-" + name + "-long-enough", "auth": {"type": "m.login.dummy"}}
    request = urllib.request.Request(
        base + "/_matrix/client/v3/register",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    status, answer = send(request)
    assert status == 200, f"register {name} on {base}: {status} {answer}"
    return Client(base, answer["user_id"], answer["access_token"])


def synapse_config(d, port, log_file, extra=None):
    """Writes the config of a Synapse named 127.0.0.1:`port` into the new
    directory `d` (plain HTTP on loopback, open registration, no rate
    limits; `extra` keys added) and makes its signing key; returns the
    command that runs it (from `d`)."""
    os.makedirs(d)
    config = {
        "server_name": f"127.0.0.1:{port}",
        "pid_file": os.path.join(d, "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": os.path.join(d, "homeserver.db")}},
        "log_config": os.path.join(d, "log.yaml"),
        "media_store_path": os.path.join(d, "media"),
        "signing_key_path": os.path.join(d, "signing.key"),
        "report_stats": False,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_shared_secret": uuid.uuid4().hex,
        "macaroon_secret_key": uuid.uuid4().hex,
        "form_secret": uuid.uuid4().hex,
        "bcrypt_rounds": 4,
        # Keys come from the servers themselves, never from matrix.org.
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # Conduit is on loopback, which Synapse refuses by default.
        "ip_range_blacklist": [],
        "ip_range_blocklist": [],
        "ip_range_whitelist": ["127.0.0.0/8"],
        "federation_verify_certificates": False,
        "presence": {"enabled": False},
        # Synapse lets only admins publish rooms and keeps its directory
        # from other servers by default; the directory scenario needs both.
        "room_list_publication_rules": [{"action": "allow"}],
        "allow_public_rooms_over_federation": True,
        "url_preview_enabled": False,
        "enable_metrics": False,
        "rc_message": {"per_second": 1000, "burst_count": 1000},
        "rc_registration": {"per_second": 1000, "burst_count": 1000},
        "rc_login": {
            "address": {"per_second": 1000, "burst_count": 1000},
            "account": {"per_second": 1000, "burst_count": 1000},
            "failed_attempts": {"per_second": 1000, "burst_count": 1000},
        },
        "rc_joins": {
            "local": {"per_second": 1000, "burst_count": 1000},
            "remote": {"per_second": 1000, "burst_count": 1000},
        },
        "rc_federation": {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 0, "reject_limit": 1000},
    }
    config.update(extra or {})
    path = os.path.join(d, "homeserver.yaml")
    # YAML is a superset of JSON.
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    with open(config["log_config"], "w") as f:
        f.write(
            "version: 1\n"
            "formatters:\n  precise:\n    format: '%(asctime)s %(name)s %(levelname)s %(request)s %(message)s'\n"
            "filters:\n  context:\n    (): synapse.logging.context.LoggingContextFilter\n    request: ''\n"
            "handlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n    filters: [context]\n"
            f"    filename: {log_file}\n"
            "root:\n  level: INFO\n  handlers: [file]\n"
            "disable_existing_loggers: false\n"
        )
    python = sys.executable
    keys = subprocess.run(
        [python, "-m", "synapse.app.homeserver", "-c", path, "--generate-keys"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=START_TIMEOUT,
        cwd=d,  # not this directory, whose synapse.py would shadow the package
    )
    assert keys.returncode == 0, f"synapse --generate-keys: {keys.stderr[-2000:]}"
    return [python, "-m", "synapse.app.homeserver", "-c", path]


class Servers:
    """Synapse and Conduit, each knowing how to reach the other."""

    def __init__(self, binary, workdir):
        self.dir = workdir
        self.conduit_port, self.synapse_port = free_ports(2)
        self.conduit_name = f"127.0.0.1:{self.conduit_port}"
        self.synapse_name = f"127.0.0.1:{self.synapse_port}"
        self.conduit_base = f"https://127.0.0.1:{self.conduit_port}"
        self.synapse_base = f"http://127.0.0.1:{self.synapse_port}"
        self.synapse_log = os.path.join(workdir, "synapse-stderr.log")
        self.synapse = self.conduit = None
        try:
            self.start_synapse()
            self.start_conduit(binary)
        except BaseException:
            self.stop()
            raise

    def start_synapse(self):
        d = os.path.join(self.dir, "synapse")
        command = synapse_config(d, self.synapse_port, os.path.join(self.dir, "synapse.log"))
        self.synapse_command = (command, d)
        self.spawn_synapse()

    def spawn_synapse(self):
        command, cwd = self.synapse_command
        with open(self.synapse_log, "a") as log:
            self.synapse = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=clean_env()
            )
        wait_until_up(self.synapse_base + "/_matrix/client/versions", self.synapse, self.synapse_log, "synapse")

    def start_conduit(self, binary):
        # Synapse does not check Conduit's certificate; the client calls
        # below, which go to Conduit over HTTPS too, do.
        ca = make_ca(self.dir)
        self.conduit_tls = ssl.create_default_context(cafile=ca)
        self.conduit = TlsConduit(
            binary, os.path.join(self.dir, "conduit"), self.conduit_name, self.conduit_port, ca, self.conduit_tls,
            {self.synapse_name: f"http://127.0.0.1:{self.synapse_port}"},
        )
        global OPENER
        OPENER = opener(self.conduit_tls)
        self.conduit.spawn()

    def stop(self):
        if self.conduit is not None:
            self.conduit.stop()
        if self.synapse is not None:
            stop(self.synapse)


# --- Scenarios. Each gets fresh users on the two shared servers. ---


def conduit_room_synapse_joins(servers, n, version=None):
    """A Conduit user creates a public room (Conduit's default room version
    unless `version`); a Synapse user joins it by room ID through the
    Conduit server; messages go both ways and each side sees them once and
    in order."""
    alice = register(servers.conduit_base, f"alice{n}")
    bob = register(servers.synapse_base, f"bob{n}")
    body = {"preset": "public_chat", "name": "On Conduit"}
    if version:
        body["room_version"] = version
    room_id = alice.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"]
    alice.send_text(room_id, "before bob came")
    joined = bob.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"server_name": servers.conduit_name})
    assert joined["room_id"] == room_id, joined
    alice.wait_for_members(room_id, [alice.user_id, bob.user_id], "bob's join reached conduit")
    bob.wait_for_members(room_id, [alice.user_id, bob.user_id], "bob's join on synapse")

    # A conversation: each answers once the other's message arrived, so
    # both servers have one order to agree on.
    alice.send_text(room_id, "hello bob")
    wait_for_tail(bob, room_id, [(alice.user_id, "hello bob")], "synapse side")
    bob.send_text(room_id, "hi alice")
    bob.send_text(room_id, "how are you?")
    wait_for_tail(alice, room_id, [(bob.user_id, "hi alice"), (bob.user_id, "how are you?")], "conduit side")
    alice.send_text(room_id, "fine, thanks")
    after = [
        (alice.user_id, "hello bob"),
        (bob.user_id, "hi alice"),
        (bob.user_id, "how are you?"),
        (alice.user_id, "fine, thanks"),
    ]
    # Both show the whole room: Synapse fetches the message from before its
    # user's join from Conduit (/backfill) when the client pages back.
    alice.wait_for_texts(room_id, [(alice.user_id, "before bob came")] + after, "conduit side")
    bob.wait_for_texts(room_id, [(alice.user_id, "before bob came")] + after, "synapse side")
    name = bob.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.name/")
    assert name.get("name") == "On Conduit", name
    return alice, bob, room_id


def conduit_room_version_12(servers, n):
    """As above, in a room of version 12 (the room ID is the create event's
    hash and names no server)."""
    alice, bob, room_id = conduit_room_synapse_joins(servers, n, version="12")
    create = bob.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.create/")
    assert create.get("room_version") == "12", create


def wait_for_membership(client, room_id, user_id, membership, what):
    deadline = time.monotonic() + EVENT_TIMEOUT
    seen = None
    while time.monotonic() < deadline:
        path = f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.member/{enc(user_id)}"
        seen = client.call("GET", path).get("membership")
        if seen == membership:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: {client.user_id} expected {user_id} {membership}, saw {seen}")


def leaving_both_ways(servers, n):
    """A Synapse user leaves a room on Conduit, a Conduit user a room on
    Synapse; each room's home server sees them go."""
    alice, bob, room_id = conduit_room_synapse_joins(servers, n)
    bob.call("POST", f"/_matrix/client/v3/rooms/{enc(room_id)}/leave", {})
    wait_for_membership(alice, room_id, bob.user_id, "leave", "synapse user left a conduit room")
    alice2, bob2, room2 = synapse_room_conduit_joins(servers, f"{n}l")
    alice2.call("POST", f"/_matrix/client/v3/rooms/{enc(room2)}/leave", {})
    wait_for_membership(bob2, room2, alice2.user_id, "leave", "conduit user left a synapse room")


def wait_for_tail(client, room_id, expected, what):
    """Waits until the room's text messages end in `expected`, and checks
    that none of them is there twice."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    seen = None
    while time.monotonic() < deadline:
        seen = client.texts(room_id)
        if seen[-len(expected):] == expected:
            for item in expected:
                assert seen.count(item) == 1, f"{what}: {item} seen {seen.count(item)} times: {seen}"
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: {client.user_id} expected the room to end in {expected}, saw {seen}")


def synapse_room_conduit_joins(servers, n, version=None):
    """A Synapse user creates a public room (Synapse's default room version
    unless `version`); a Conduit user joins it over federation; messages go
    both ways."""
    bob = register(servers.synapse_base, f"sbob{n}")
    alice = register(servers.conduit_base, f"calice{n}")
    body = {"preset": "public_chat", "name": "On Synapse"}
    if version:
        body["room_version"] = version
    room_id = bob.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"]
    create = bob.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.create/")
    if version:
        assert create.get("room_version") == version, create
    bob.send_text(room_id, "before alice came")
    joined = alice.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"via": servers.synapse_name})
    assert joined["room_id"] == room_id, joined
    bob.wait_for_members(room_id, [alice.user_id, bob.user_id], "alice's join reached synapse")
    alice.wait_for_members(room_id, [alice.user_id, bob.user_id], "alice's join on conduit")
    name = alice.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.name/")
    assert name.get("name") == "On Synapse", name

    bob.send_text(room_id, "welcome alice")
    wait_for_tail(alice, room_id, [(bob.user_id, "welcome alice")], "conduit side")
    alice.send_text(room_id, "thanks bob")
    alice.send_text(room_id, "nice room")
    after = [(bob.user_id, "welcome alice"), (alice.user_id, "thanks bob"), (alice.user_id, "nice room")]
    bob.wait_for_texts(room_id, [(bob.user_id, "before alice came")] + after, "synapse side")
    wait_for_tail(alice, room_id, after, "conduit side")
    return alice, bob, room_id


def synapse_room_version_10(servers, n):
    """As above, in a room of version 10 (room IDs with a server name,
    pre-v11 redaction and auth rules)."""
    synapse_room_conduit_joins(servers, n, version="10")


def typing_and_receipts(servers, n):
    """In a room on Synapse that a Conduit user joined, typing notices and
    read receipts cross both ways."""
    alice, bob, room_id = synapse_room_conduit_joins(servers, n)
    alice.catch_up()
    bob.catch_up()

    def typing_of(user):
        def check(answer):
            room = answer.get("rooms", {}).get("join", {}).get(room_id, {})
            return any(
                e.get("type") == "m.typing" and user in e.get("content", {}).get("user_ids", [])
                for e in room.get("ephemeral", {}).get("events", [])
            )

        return check

    def receipt_of(user, event_id):
        def check(answer):
            room = answer.get("rooms", {}).get("join", {}).get(room_id, {})
            for e in room.get("ephemeral", {}).get("events", []):
                if e.get("type") == "m.receipt" and user in e.get("content", {}).get(event_id, {}).get("m.read", {}):
                    return True
            return False

        return check

    alice.call("PUT", f"/_matrix/client/v3/rooms/{enc(room_id)}/typing/{enc(alice.user_id)}", {"typing": True, "timeout": 30000})
    bob.sync_until(typing_of(alice.user_id), "conduit user's typing on synapse")
    bob.call("PUT", f"/_matrix/client/v3/rooms/{enc(room_id)}/typing/{enc(bob.user_id)}", {"typing": True, "timeout": 30000})
    alice.sync_until(typing_of(bob.user_id), "synapse user's typing on conduit")

    from_bob = bob.send_text(room_id, "read this")
    wait_for_tail(alice, room_id, [(bob.user_id, "read this")], "conduit side")
    alice.call("POST", f"/_matrix/client/v3/rooms/{enc(room_id)}/receipt/m.read/{enc(from_bob)}", {})
    bob.sync_until(receipt_of(alice.user_id, from_bob), "conduit user's read receipt on synapse")

    from_alice = alice.send_text(room_id, "and this")
    wait_for_tail(bob, room_id, [(alice.user_id, "and this")], "synapse side")
    bob.call("POST", f"/_matrix/client/v3/rooms/{enc(room_id)}/receipt/m.read/{enc(from_alice)}", {})
    alice.sync_until(receipt_of(bob.user_id, from_alice), "synapse user's read receipt on conduit")


def conduit_user_sees_history_from_before_join(servers, n):
    """A Conduit user who joined a room on Synapse pages back past the join
    and sees what was said before it (public_chat rooms share history with
    members). Needs Conduit to backfill from the room's other servers."""
    bob = register(servers.synapse_base, f"hbob{n}")
    alice = register(servers.conduit_base, f"halice{n}")
    room_id = bob.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]
    said = [f"before alice came {i}" for i in range(12)]
    for text in said:
        bob.send_text(room_id, text)
    alice.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"via": servers.synapse_name})
    bob.wait_for_members(room_id, [alice.user_id, bob.user_id], "alice's join reached synapse")
    bob.send_text(room_id, "welcome alice")
    said.append("welcome alice")
    alice.wait_for_texts(room_id, [(bob.user_id, text) for text in said], "history on conduit")
    # Small pages, as a client scrolling up reads: each fetches more from
    # Synapse, up to the room's creation.
    events, page_from = [], None
    for _ in range(40):
        query = {"dir": "b", "limit": "4"}
        if page_from:
            query["from"] = page_from
        page = alice.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/messages", query=query)
        events.extend(page["chunk"])
        page_from = page.get("end")
        if not page_from:
            break
    events.reverse()
    assert events[0]["type"] == "m.room.create", f"history starts with {events[0]['type']}"
    texts = [e["content"]["body"] for e in events if e["type"] == "m.room.message"]
    assert texts == said, f"paged history: {texts}"


def encrypted_room_across_servers(servers, n):
    """matrix-nio on each side of an encrypted room: a Conduit user invites
    a Synapse user, and each decrypts the other's message. Keys, one-time
    key claims, device lists and the to-device messages that carry room keys
    all cross between the servers."""
    asyncio.run(_encrypted_room_across_servers(servers, n))


async def _encrypted_room_across_servers(servers, n):
    # The nio helpers of the single-server interop suite.
    from nio import AsyncClient, AsyncClientConfig, JoinResponse, RegisterResponse
    from run import create_encrypted_room, e2e_sync, wait_for_text

    stores = [tempfile.TemporaryDirectory(), tempfile.TemporaryDirectory()]
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    alice = AsyncClient(
        servers.conduit_base, f"ealice{n}", store_path=stores[0].name, config=config, ssl=servers.conduit_tls
    )
    bob = AsyncClient(servers.synapse_base, f"ebob{n}", store_path=stores[1].name, config=config)
    try:
        for client, name in ((alice, f"ealice{n}"), (bob, f"ebob{n}")):
            reg = await client.register(name, "pw-" + name + "-long-enough", name + " device")
            assert isinstance(reg, RegisterResponse), f"register {name}: {reg}"
            await e2e_sync(client)
        room_id = await create_encrypted_room(alice, "Across", bob.user_id)
        deadline = time.monotonic() + EVENT_TIMEOUT
        while room_id not in bob.invited_rooms and time.monotonic() < deadline:
            await e2e_sync(bob, timeout=1000)
        assert room_id in bob.invited_rooms, "the invite never reached the Synapse user"
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), f"join: {joined}"
        for client in (alice, bob, alice, bob):
            await e2e_sync(client)
        deadline = time.monotonic() + 2 * EVENT_TIMEOUT
        for sender, receiver, body in [(alice, bob, "secret from conduit"), (bob, alice, "secret from synapse")]:
            sent = await sender.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
            )
            assert hasattr(sent, "event_id"), f"send: {sent}"
            await wait_for_text(receiver, room_id, sender.user_id, body, deadline)
    finally:
        await alice.close()
        await bob.close()
        for store in stores:
            store.cleanup()


def upload_device_keys(client, device_id):
    """Publishes made-up keys for the client's device (servers pass device
    keys on without checking them; clients check the signatures)."""
    keys = {
        "user_id": client.user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{device_id}": uuid.uuid4().hex, f"ed25519:{device_id}": uuid.uuid4().hex},
        "signatures": {},
    }
    client.call("POST", "/_matrix/client/v3/keys/upload", {"device_keys": keys})
    return keys["keys"][f"ed25519:{device_id}"]


def devices_seen(client, user_id):
    """`user_id`'s devices as the client's server answers a key query:
    (device ID -> ed25519 key, the failures)."""
    answer = client.call("POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}})
    devices = answer.get("device_keys", {}).get(user_id, {})
    return {d: k["keys"].get(f"ed25519:{d}") for d, k in devices.items()}, answer.get("failures", {})


def device_lists_kept_in_step(servers, n):
    """Conduit keeps a Synapse user's device list once its client asked for
    it (fetched with /user/devices), and Synapse's m.device_list_update
    EDUs keep it right: a new device and a logged-out one show on Conduit,
    and the list is answered while Synapse is down."""
    alice = register(servers.conduit_base, f"dalice{n}")
    bob = register(servers.synapse_base, f"dbob{n}")
    phone = bob.call("GET", "/_matrix/client/v3/account/whoami")["device_id"]
    phone_key = upload_device_keys(bob, phone)
    room_id = alice.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]
    bob.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"server_name": servers.conduit_name})
    alice.wait_for_members(room_id, [alice.user_id, bob.user_id], "bob's join reached conduit")
    mark = os.path.getsize(servers.conduit.log)
    assert devices_seen(alice, bob.user_id) == ({phone: phone_key}, {}), "bob's phone on conduit"
    with open(servers.conduit.log, errors="replace") as log:
        log.seek(mark)
        assert "/_matrix/federation/v1/user/devices/" in log.read(), "conduit fetched bob's list whole"

    # Bob signs in on a laptop with its own keys: Synapse tells Conduit.
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": bob.user_id},
            "password": f"pw-dbob{n}-long-enough", "device_id": "LAPTOP"}
    laptop = Client(servers.synapse_base, bob.user_id, bob.call("POST", "/_matrix/client/v3/login", body)["access_token"])
    laptop_key = upload_device_keys(laptop, "LAPTOP")
    both = {phone: phone_key, "LAPTOP": laptop_key}
    poll(lambda: devices_seen(alice, bob.user_id), lambda seen: seen == (both, {}), "the laptop reached conduit")

    # With Synapse down, Conduit answers from the list it keeps.
    stop(servers.synapse)
    try:
        assert devices_seen(alice, bob.user_id) == (both, {}), "bob's devices while synapse is down"
    finally:
        servers.spawn_synapse()

    # The laptop logs out: its deletion reaches Conduit too.
    laptop.call("POST", "/_matrix/client/v3/logout", {})
    poll(lambda: devices_seen(alice, bob.user_id), lambda seen: seen == ({phone: phone_key}, {}),
         "the laptop's deletion reached conduit")


def current_state(client, room_id):
    """The room's current state as {(type, state_key): event_id}."""
    events = client.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/state")
    return {(e["type"], e["state_key"]): e["event_id"] for e in events}


def state_conflict_heals(servers, n):
    """Both servers change the room's power levels and memberships while
    they cannot reach each other; once the link is back, state resolution
    gives both the same room state."""
    alice = register(servers.conduit_base, f"salice{n}")
    dave = register(servers.conduit_base, f"sdave{n}")
    bob = register(servers.synapse_base, f"sbob{n}")
    room_id = alice.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]
    for user, query in ((bob, {"server_name": servers.conduit_name}), (dave, None)):
        user.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query=query)
    levels = alice.call("GET", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.power_levels/")
    levels["users"][bob.user_id] = 100
    alice.call("PUT", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.power_levels/", levels)
    alice.send_text(room_id, "before the split")
    bob.wait_for_texts(room_id, [(alice.user_id, "before the split")], "synapse side before the split")

    # The link is cut: Synapse changes the room while Conduit is down...
    servers.conduit.stop()
    bob.call("PUT", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.name/", {"name": "named on synapse"})
    bob.call("POST", f"/_matrix/client/v3/rooms/{enc(room_id)}/ban", {"user_id": dave.user_id, "reason": "split"})
    # ...then Conduit changes it while Synapse is down.
    stop(servers.synapse)
    servers.conduit.spawn()
    # Alice raises the very user Bob banned meanwhile (she cannot lower
    # Bob: his level equals hers).
    levels["users"][dave.user_id] = 60
    levels["events_default"] = 10
    alice.call("PUT", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.power_levels/", levels)
    alice.call("PUT", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.topic/", {"topic": "set on conduit"})
    servers.spawn_synapse()

    # Healed: messages both ways carry each side's history to the other,
    # and both resolve to one state.
    alice.send_text(room_id, "after the split (conduit)")
    deadline = time.monotonic() + 2 * EVENT_TIMEOUT
    conduit_state = synapse_state = None
    while time.monotonic() < deadline:
        conduit_state = current_state(alice, room_id)
        synapse_state = current_state(bob, room_id)
        if conduit_state == synapse_state and ("m.room.name", "") in conduit_state and (
            "m.room.topic", ""
        ) in conduit_state:
            return
        time.sleep(0.5)
    differ = {k: (conduit_state.get(k), synapse_state.get(k)) for k in set(conduit_state) | set(synapse_state)
              if conduit_state.get(k) != synapse_state.get(k)}
    raise AssertionError(f"the two servers' states differ after healing: {differ}")


def wait_for_invite(client, room_id, what):
    def invited(answer):
        return room_id in answer.get("rooms", {}).get("invite", {})

    client.sync_until(invited, what)


def synapse_user_invites_conduit_user(servers, n):
    """A Synapse user invites a Conduit user to a private room; the Conduit
    user sees the invite, joins, and they talk."""
    bob = register(servers.synapse_base, f"ibob{n}")
    alice = register(servers.conduit_base, f"ialice{n}")
    room_id = bob.call("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"})["room_id"]
    bob.call("POST", f"/_matrix/client/v3/rooms/{enc(room_id)}/invite", {"user_id": alice.user_id})
    wait_for_invite(alice, room_id, "invite from synapse on conduit")
    alice.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"via": servers.synapse_name})
    bob.send_text(room_id, "glad you came")
    wait_for_tail(alice, room_id, [(bob.user_id, "glad you came")], "conduit side")


def conduit_user_invites_synapse_user(servers, n):
    """A Conduit user invites a Synapse user to a private room; the Synapse
    user sees the invite, joins, and they talk. The invite goes through the
    federation invite endpoint: the invitee's server is not in the room
    yet, so it could not take the event in a transaction."""
    alice = register(servers.conduit_base, f"jalice{n}")
    bob = register(servers.synapse_base, f"jbob{n}")
    room_id = alice.call("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"})["room_id"]
    alice.call("POST", f"/_matrix/client/v3/rooms/{enc(room_id)}/invite", {"user_id": bob.user_id})
    wait_for_invite(bob, room_id, "invite from conduit on synapse")
    bob.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"server_name": servers.conduit_name})
    alice.send_text(room_id, "glad you came")
    wait_for_tail(bob, room_id, [(alice.user_id, "glad you came")], "synapse side")


def space_with_child(client, name, child_name, server_name):
    """A public space of `client`'s with one public child room, both
    published in the directory; their room IDs."""
    space = client.call(
        "POST", "/_matrix/client/v3/createRoom",
        {"preset": "public_chat", "visibility": "public", "name": name, "creation_content": {"type": "m.space"}},
    )["room_id"]
    child = client.call(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "visibility": "public", "name": child_name}
    )["room_id"]
    path = f"/_matrix/client/v3/rooms/{enc(space)}/state/m.space.child/{enc(child)}"
    client.call("PUT", path, {"via": [server_name]})
    return space, child


def directories_and_spaces_across_servers(servers, n):
    """Each server's user lists the other server's room directory (with a
    search) through their own server, joins the other's space, and sees
    its child, which only the other server knows, in the space's
    hierarchy."""
    alice = register(servers.conduit_base, f"dalice{n}")
    bob = register(servers.synapse_base, f"dbob{n}")
    c_space, c_child = space_with_child(alice, f"Conduit space {n}", f"Conduit corner {n}", servers.conduit_name)
    s_space, s_child = space_with_child(bob, f"Synapse space {n}", f"Synapse corner {n}", servers.synapse_name)

    for client, other, child, child_name in [
        (alice, servers.synapse_name, s_child, f"Synapse corner {n}"),
        (bob, servers.conduit_name, c_child, f"Conduit corner {n}"),
    ]:
        # Synapse's directory lags its rooms by a moment.
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            listed = client.call(
                "POST", "/_matrix/client/v3/publicRooms", {"filter": {"generic_search_term": f"corner {n}"}},
                query={"server": other},
            )
            found = [(r["room_id"], r.get("name")) for r in listed["chunk"]]
            if found == [(child, child_name)]:
                break
            assert time.monotonic() < deadline, f"{client.user_id} listing {other}: {listed}"
            time.sleep(0.2)

    alice.call("POST", f"/_matrix/client/v3/join/{enc(s_space)}", {}, query={"via": servers.synapse_name})
    bob.call("POST", f"/_matrix/client/v3/join/{enc(c_space)}", {}, query={"via": servers.conduit_name})
    for client, space, child, child_name in [
        (alice, s_space, s_child, f"Synapse corner {n}"),
        (bob, c_space, c_child, f"Conduit corner {n}"),
    ]:
        rooms = client.call("GET", f"/_matrix/client/v1/rooms/{enc(space)}/hierarchy")["rooms"]
        assert [(r["room_id"], r.get("name")) for r in rooms[1:]] == [(child, child_name)], rooms


def set_join_rules(client, room_id, content):
    client.call("PUT", f"/_matrix/client/v3/rooms/{enc(room_id)}/state/m.room.join_rules/", content)


def knocks_both_ways(servers, n):
    """Each server has a knock room: the other's user knocks (make_knock,
    send_knock) and sees the knock in sync, the room's user sees it and
    invites, and the knocker joins and talks. (Synapse withdraws a knock on
    its own side only, so withdrawing is left to the Conduit-only tests.)"""
    conduit_home = (register(servers.conduit_base, f"kalice{n}"), register(servers.synapse_base, f"kbob{n}"))
    synapse_home = (register(servers.synapse_base, f"kcarol{n}"), register(servers.conduit_base, f"kdan{n}"))
    for (home, guest), home_name in ((conduit_home, servers.conduit_name), (synapse_home, servers.synapse_name)):
        body = {"preset": "private_chat", "room_version": "11"}
        room_id = home.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"]
        set_join_rules(home, room_id, {"join_rule": "knock"})
        knock = f"/_matrix/client/v3/knock/{enc(room_id)}"
        guest.call("POST", knock, {"reason": "hi"}, query={"via": home_name})
        guest.sync_until(lambda a: room_id in a.get("rooms", {}).get("knock", {}), "the knock in the knocker's sync")
        wait_for_membership(home, room_id, guest.user_id, "knock", "the knock on the home server")
        home.call("POST", f"/_matrix/client/v3/rooms/{enc(room_id)}/invite", {"user_id": guest.user_id})
        wait_for_invite(guest, room_id, "invite after the knock")
        guest.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"server_name": home_name})
        guest.send_text(room_id, "thanks for letting me in")
        wait_for_tail(home, room_id, [(guest.user_id, "thanks for letting me in")], "home side")


def restricted_rooms_both_ways(servers, n):
    """Each server has a room restricted to members of a public room of its
    own: the other's user, a member of that room, joins without an invite
    (the resident server signs the join as the authorising server)."""
    conduit_home = (register(servers.conduit_base, f"ralice{n}"), register(servers.synapse_base, f"rbob{n}"))
    synapse_home = (register(servers.synapse_base, f"rcarol{n}"), register(servers.conduit_base, f"rdan{n}"))
    for (home, guest), home_name in ((conduit_home, servers.conduit_name), (synapse_home, servers.synapse_name)):
        space = home.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]
        room_id = home.call(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "room_version": "10"}
        )["room_id"]
        set_join_rules(
            home, room_id, {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
        )
        guest.call("POST", f"/_matrix/client/v3/join/{enc(space)}", {}, query={"via": home_name})
        guest.call("POST", f"/_matrix/client/v3/join/{enc(room_id)}", {}, query={"via": home_name})
        home.wait_for_members(room_id, [home.user_id, guest.user_id], "the restricted join on the home server")
        guest.send_text(room_id, "in through the space")
        wait_for_tail(home, room_id, [(guest.user_id, "in through the space")], "home side")


# The scenarios `scripts/test` runs: each passes today.
def upload(client, data, content_type, filename):
    """Uploads raw bytes; returns the media ID of the mxc:// URI."""
    url = client.base + "/_matrix/media/v3/upload?" + urllib.parse.urlencode({"filename": filename})
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Authorization", f"Bearer {client.token}")
    request.add_header("Content-Type", content_type)
    status, answer = send(request)
    assert status == 200, f"upload on {client.base}: {status} {answer}"
    return answer["content_uri"].rsplit("/", 1)[1]


def download(client, path):
    """A media GET through the client's server: (status, Content-Type,
    Content-Disposition, bytes)."""
    request = urllib.request.Request(client.base + path)
    request.add_header("Authorization", f"Bearer {client.token}")
    try:
        with OPENER.open(request, timeout=60) as response:
            headers = response.headers
            return response.status, headers.get("Content-Type"), headers.get("Content-Disposition"), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), None, e.read()


def png(width, height):
    from PIL import Image  # Synapse's own dependency, in its venv

    image = Image.new("RGB", (width, height))
    image.putdata([(x % 256, y % 256, 90) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def media_both_ways(servers, n):
    """Each server's user downloads the other's upload through their own
    server (Conduit fetches from Synapse's federation media endpoint, Synapse
    from Conduit's), and a thumbnail of the other's image."""
    from PIL import Image

    alice = register(servers.conduit_base, f"malice{n}")
    bob = register(servers.synapse_base, f"mbob{n}")
    for uploader, downloader, origin in [(bob, alice, servers.synapse_name), (alice, bob, servers.conduit_name)]:
        text = f"written by {uploader.user_id}\n".encode() * 50
        text_id = upload(uploader, text, "text/plain", "notes.txt")
        status, content_type, disposition, body = download(
            downloader, f"/_matrix/client/v1/media/download/{origin}/{text_id}"
        )
        assert status == 200, f"{downloader.base} download: {status} {body[:300]!r}"
        assert body == text, f"{downloader.base}: other bytes"
        assert content_type.startswith("text/plain"), content_type
        assert "notes.txt" in (disposition or ""), disposition
        image_id = upload(uploader, png(400, 300), "image/png", "photo.png")
        status, content_type, _, body = download(
            downloader,
            f"/_matrix/client/v1/media/thumbnail/{origin}/{image_id}?width=96&height=96&method=crop",
        )
        assert status == 200, f"{downloader.base} thumbnail: {status} {body[:300]!r}"
        thumbnail = Image.open(io.BytesIO(body))
        assert thumbnail.size[0] <= 100 and thumbnail.size[1] <= 100, thumbnail.size
        status, _, _, body = download(downloader, f"/_matrix/client/v1/media/download/{origin}/NoSuchMedia{n}")
        assert status == 404, f"{downloader.base} unknown media: {status} {body[:300]!r}"


SCENARIOS = [
    conduit_room_synapse_joins,
    synapse_room_conduit_joins,
    synapse_room_version_10,
    conduit_room_version_12,
    typing_and_receipts,
    leaving_both_ways,
    synapse_user_invites_conduit_user,
    conduit_user_invites_synapse_user,
    encrypted_room_across_servers,
    device_lists_kept_in_step,
    state_conflict_heals,
    directories_and_spaces_across_servers,
    media_both_ways,
    knocks_both_ways,
    restricted_rooms_both_ways,
    conduit_user_sees_history_from_before_join,
]
# Scenarios that need what Conduit does not do yet; run them by name.
PENDING = []


def main():
    logs = [os.path.join("conduit", "conduit.log"), "synapse.log", "synapse-stderr.log"]
    run_scenarios("synapse", Servers, SCENARIOS, PENDING, logs)


if __name__ == "__main__":
    main()

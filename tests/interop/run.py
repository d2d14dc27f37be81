"""Interop tests: real Matrix clients that nobody here wrote, against a fresh
Conduit on a loopback port. Prints 'N passed, N failed' and exits non-zero on
any failure."""

import argparse
import asyncio
import hashlib
import io
import os
import struct
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import json

from nio.api import RoomVisibility
from nio import (
    AsyncClient,
    AsyncClientConfig,
    MegolmEvent,
    DevicesResponse,
    InviteMemberEvent,
    JoinResponse,
    LoginResponse,
    MemoryDownloadResponse,
    ProfileGetDisplayNameResponse,
    RedactionEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomMessagesResponse,
    RoomMessageImage,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    ThumbnailResponse,
    UploadResponse,
)
from nio.api import ResizingMethod
from nio.crypto.attachments import decrypt_attachment


class Conduit:
    """The real binary with its own data directory; port chosen by the OS.
    `extra_config` is more lines for its `[global]` table; with `log_file`
    its log is kept there too."""

    def __init__(self, binary, extra_config="", log_file=None):
        self.dir = tempfile.TemporaryDirectory()
        config = os.path.join(self.dir.name, "conduit.toml")
        with open(config, "w") as f:
            f.write(
                '[global]\nserver_name = "localhost"\naddress = "127.0.0.1"\nport = 0\n'
                f'database_path = "{self.dir.name}/db"\nargon2_memory_kib = 64\nargon2_iterations = 1\n'
                # Test clients send and register faster than people do.
                "rate_limits.enabled = false\n"
                + extra_config
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        self.proc = subprocess.Popen([binary, "-c", config], stderr=subprocess.PIPE, text=True, env=env)
        self.base = None
        found = threading.Event()

        def read_log():
            log = open(log_file, "a", buffering=1) if log_file else None
            for line in self.proc.stderr:
                if log:
                    log.write(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m and not found.is_set():
                    self.base = m.group(1)
                    found.set()
            found.set()  # it exited: no need to wait any longer

        threading.Thread(target=read_log, daemon=True).start()
        if not found.wait(30) or self.base is None:
            self.stop()
            raise RuntimeError(f"conduit did not start within 30 s (exit code {self.proc.returncode})")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


async def nio_account_basics(base):
    """matrix-nio registers, logs in on a second device, sets and reads back a
    display name, and lists both devices."""
    client = AsyncClient(base, "niouser")
    try:
        reg = await client.register("niouser", "nio-password", "first device")
        assert isinstance(reg, RegisterResponse), f"register: {reg}"
        assert reg.user_id == "@niouser:localhost", reg.user_id
    finally:
        await client.close()

    client = AsyncClient(base, "@niouser:localhost")
    try:
        login = await client.login("nio-password", device_name="nio laptop")
        assert isinstance(login, LoginResponse), f"login: {login}"
        await client.set_displayname("Nio User")
        name = await client.get_displayname()
        assert isinstance(name, ProfileGetDisplayNameResponse), f"get_displayname: {name}"
        assert name.displayname == "Nio User", name.displayname
        devices = await client.devices()
        assert isinstance(devices, DevicesResponse), f"devices: {devices}"
        names = sorted(d.display_name for d in devices.devices)
        assert names == ["first device", "nio laptop"], names
        assert login.device_id in [d.id for d in devices.devices]
    finally:
        await client.close()


async def nio_wrong_password_is_refused(base):
    client = AsyncClient(base, "niouser2")
    try:
        reg = await client.register("niouser2", "right", "d")
        assert isinstance(reg, RegisterResponse), f"register: {reg}"
    finally:
        await client.close()
    client = AsyncClient(base, "@niouser2:localhost")
    try:
        login = await client.login("wrong")
        assert not isinstance(login, LoginResponse), "a wrong password logged in"
        assert getattr(login, "status_code", None) == "M_FORBIDDEN", login
    finally:
        await client.close()


async def registered(base, name):
    client = AsyncClient(base, name)
    reg = await client.register(name, "pw-" + name, name + " device")
    assert isinstance(reg, RegisterResponse), f"register {name}: {reg}"
    return client


# Big enough that a timeline is never cut while a sync loop keeps up.
SYNC_FILTER = {"room": {"timeline": {"limit": 100}}}


async def collect_texts(client, room_id, sender, want, deadline):
    """Syncs until `want` text messages from `sender` arrived in the room;
    returns their bodies in arrival order and whether any timeline was limited."""
    bodies = []
    limited = False
    while len(bodies) < want and time.monotonic() < deadline:
        resp = await client.sync(timeout=5000, sync_filter=SYNC_FILTER)
        assert isinstance(resp, SyncResponse), f"sync: {resp}"
        room = resp.rooms.join.get(room_id)
        if room is None:
            continue
        limited = limited or room.timeline.limited
        for event in room.timeline.events:
            if isinstance(event, RoomMessageText) and event.sender == sender:
                bodies.append(event.body)
    return bodies, limited


async def nio_two_users_chat(base):
    """Two users create, invite and join; 100 messages go each way and each
    arrives once and in order through sync; backward pagination returns the
    whole history; a redaction and an edit reach the other user."""
    alice = await registered(base, "alice")
    bob = await registered(base, "bob")
    try:
        created = await alice.room_create(name="Family", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), f"room_create: {created}"
        room_id = created.room_id

        first = await bob.sync(timeout=0, sync_filter=SYNC_FILTER)
        assert room_id in first.rooms.invite, f"bob was not invited: {first.rooms.invite}"
        invite_events = first.rooms.invite[room_id].invite_state
        assert any(isinstance(e, InviteMemberEvent) for e in invite_events), invite_events
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), f"join: {joined}"
        await alice.sync(timeout=0, sync_filter=SYNC_FILTER)
        await bob.sync(timeout=0, sync_filter=SYNC_FILTER)

        async def send_all(sender, prefix):
            for i in range(100):
                sent = await sender.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"{prefix} {i}"})
                assert isinstance(sent, RoomSendResponse), f"send: {sent}"

        deadline = time.monotonic() + 40
        for sender, receiver, prefix in [(alice, bob, "from alice"), (bob, alice, "from bob")]:
            # The receiver catches up first (with its own earlier sends), so
            # only the sender's 100 messages are new to it: more than its
            # timeline limit would rightly come back limited.
            await receiver.sync(timeout=0, sync_filter=SYNC_FILTER)
            received, _ = await asyncio.gather(
                collect_texts(receiver, room_id, sender.user_id, 100, deadline), send_all(sender, prefix)
            )
            bodies, limited = received
            expected = [f"{prefix} {i}" for i in range(100)]
            assert not limited, "a timeline was cut while the receiver kept up"
            assert bodies == expected, f"{prefix}: got {len(bodies)}, first differences {[b for b in bodies if b not in expected][:3]}"

        # Full backward pagination from the newest event to the room's start.
        history = []
        token = alice.next_batch
        for _ in range(50):
            page = await alice.room_messages(room_id, start=token, limit=30)
            assert isinstance(page, RoomMessagesResponse), f"room_messages: {page}"
            history.extend(e.body for e in page.chunk if isinstance(e, RoomMessageText))
            if not page.end or not page.chunk:
                break
            token = page.end
        history.reverse()
        assert history == [f"from alice {i}" for i in range(100)] + [f"from bob {i}" for i in range(100)], (
            f"history has {len(history)} messages"
        )

        # An edit and a redaction, seen by the other user.
        original = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "typo"})
        edit = {
            "msgtype": "m.text",
            "body": "* fixed",
            "m.new_content": {"msgtype": "m.text", "body": "fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original.event_id},
        }
        await alice.room_send(room_id, "m.room.message", edit)
        unwanted = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "delete me"})
        redacted = await alice.room_redact(room_id, unwanted.event_id, reason="oops")
        assert not hasattr(redacted, "status_code"), f"redact: {redacted}"

        saw_edit = saw_redaction = False
        deadline = time.monotonic() + 20
        while not (saw_edit and saw_redaction) and time.monotonic() < deadline:
            resp = await bob.sync(timeout=5000, sync_filter=SYNC_FILTER)
            room = resp.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                relates = event.source.get("content", {}).get("m.relates_to", {})
                if relates.get("rel_type") == "m.replace" and relates.get("event_id") == original.event_id:
                    saw_edit = event.source["content"]["m.new_content"]["body"] == "fixed"
                if isinstance(event, RedactionEvent) and event.redacts == unwanted.event_id:
                    saw_redaction = True
        assert saw_edit, "bob did not see the edit"
        assert saw_redaction, "bob did not see the redaction"
        fetched = await bob.room_get_event(room_id, unwanted.event_id)
        assert isinstance(fetched, RoomGetEventResponse), f"room_get_event: {fetched}"
        assert "body" not in fetched.event.source.get("content", {}), fetched.event.source
    finally:
        await alice.close()
        await bob.close()


async def encrypted_client(base, name, store, ssl=None):
    """A registered matrix-nio client with end-to-end encryption (vodozemac);
    `ssl`, an SSL context, checks the server's certificate."""
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = AsyncClient(base, name, store_path=store, config=config, ssl=ssl)
    reg = await client.register(name, "pw-" + name, name + " device")
    assert isinstance(reg, RegisterResponse), f"register {name}: {reg}"
    return client


async def e2e_sync(client, timeout=0):
    """One sync plus the key work nio's sync_forever would do after it."""
    resp = await client.sync(timeout=timeout, sync_filter=SYNC_FILTER)
    assert isinstance(resp, SyncResponse), f"sync: {resp}"
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()
    return resp


async def wait_for_text(client, room_id, sender, body, deadline):
    """Syncs until a decrypted text `body` from `sender` arrives; fails on
    an event that stayed encrypted."""
    while time.monotonic() < deadline:
        resp = await e2e_sync(client, timeout=2000)
        room = resp.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            assert not isinstance(event, MegolmEvent), f"{client.user_id} could not decrypt {event.event_id}"
            if isinstance(event, RoomMessageText) and event.sender == sender and event.body == body:
                return event
    raise AssertionError(f"{client.user_id} never received {body!r}")


async def create_encrypted_room(client, name, invitee):
    """Creates a Megolm-encrypted room inviting `invitee`; returns its ID."""
    created = await client.room_create(
        name=name,
        invite=[invitee],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    )
    assert isinstance(created, RoomCreateResponse), f"room_create: {created}"
    return created.room_id


async def nio_encrypted_room(base):
    """Two matrix-nio users in an encrypted room: each decrypts the other's
    message, and every message the server stores there is m.room.encrypted."""
    stores = [tempfile.TemporaryDirectory(), tempfile.TemporaryDirectory()]
    alice = await encrypted_client(base, "ealice", stores[0].name)
    bob = await encrypted_client(base, "ebob", stores[1].name)
    try:
        for client in (alice, bob):
            await e2e_sync(client)
        room_id = await create_encrypted_room(alice, "Secrets", bob.user_id)
        await e2e_sync(bob)
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), f"join: {joined}"
        for client in (alice, bob, alice, bob):
            await e2e_sync(client)
        assert alice.rooms[room_id].encrypted, "alice's client does not see the room as encrypted"

        deadline = time.monotonic() + 60
        for sender, receiver, body in [(alice, bob, "secret from alice"), (bob, alice, "secret from bob")]:
            sent = await sender.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
            )
            assert isinstance(sent, RoomSendResponse), f"send: {sent}"
            await wait_for_text(receiver, room_id, sender.user_id, body, deadline)

        # What the server holds: ciphertext only.
        url = f"{base}/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages?dir=b&limit=1000"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {alice.access_token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            chunk = json.load(response)["chunk"]
        messages = [e for e in chunk if "state_key" not in e]
        assert len(messages) == 2, f"expected 2 messages, server has {[e['type'] for e in messages]}"
        assert all(e["type"] == "m.room.encrypted" for e in messages), [e["type"] for e in messages]
        assert all("body" not in json.dumps(e["content"]) for e in messages), "plaintext on the server"
    finally:
        await alice.close()
        await bob.close()
        for store in stores:
            store.cleanup()


def commander(base, workdir, *args):
    """Runs matrix-commander (installed next to this Python) and returns its
    standard output; fails on a non-zero exit."""
    binary = os.path.join(os.path.dirname(sys.executable), "matrix-commander")
    common = ["--credentials", os.path.join(workdir, "creds.json"), "--store", os.path.join(workdir, "store")]
    env = dict(os.environ, HOME=workdir)
    done = subprocess.run(
        [binary, *common, *args], capture_output=True, text=True, timeout=60, cwd=workdir, env=env, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, f"matrix-commander {args[:2]} exited {done.returncode}: {done.stderr[-500:]}"
    return done.stdout


def commander_login_and_join(base, workdir, alias):
    """Logs matrix-commander in as @commander (registered beforehand) and
    joins it to the room `alias`."""
    commander(
        base, workdir, "--login", "password", "--homeserver", base, "--user-login", "@commander:localhost",
        "--password", "pw-commander", "--device", "commander", "--room-default", alias,
    )
    commander(base, workdir, "--room-join", alias)


async def alice_and_commander_in_a_room(base, workdir, alias, name):
    """alice creates the public room `#alias:localhost`; matrix-commander,
    as @commander, logs in and joins it. Returns alice's client and the
    room ID."""
    alice = await registered(base, "alice")
    mc = await registered(base, "commander")
    await mc.close()
    try:
        created = await alice.room_create(alias=alias, name=name, visibility=RoomVisibility.public)
        assert isinstance(created, RoomCreateResponse), f"room_create: {created}"
        await alice.sync(timeout=0, sync_filter=SYNC_FILTER)
        commander_login_and_join(base, workdir, f"#{alias}:localhost")
    except BaseException:
        await alice.close()
        raise
    return alice, created.room_id


async def commander_through_an_alias(base):
    """matrix-commander joins a room by its alias, sends to the alias, and
    receives a reply through sync; the other user sees its message once."""
    workdir = tempfile.mkdtemp()
    alice = None
    try:
        alice, room_id = await alice_and_commander_in_a_room(base, workdir, "family", "Family")
        commander(base, workdir, "-m", "hello from matrix-commander", "--room", "#family:localhost")

        bodies, _ = await collect_texts(alice, room_id, "@commander:localhost", 1, time.monotonic() + 20)
        assert bodies == ["hello from matrix-commander"], bodies

        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello commander"})
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"
        received = commander(base, workdir, "--listen", "once")
        assert "hello commander" in received, received
        # Once only: a second listen has nothing new.
        again = commander(base, workdir, "--listen", "once")
        assert "hello commander" not in again, again
    finally:
        if alice is not None:
            await alice.close()
        subprocess.run(["rm", "-rf", workdir], check=False)


def png(width, height):
    """A valid RGB PNG with a colour gradient, built by hand (no imaging
    library needed)."""
    import zlib

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 128))
        for y in range(height)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_size(data):
    """Width and height from a PNG's header."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {data[:16]!r}"
    return struct.unpack(">II", data[16:24])


async def wait_for_event(client, room_id, sender, wanted, deadline):
    """Syncs until an event from `sender` for which `wanted` holds arrives;
    returns it."""
    while time.monotonic() < deadline:
        resp = await client.sync(timeout=5000, sync_filter=SYNC_FILTER)
        assert isinstance(resp, SyncResponse), f"sync: {resp}"
        room = resp.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if event.sender == sender and wanted(event):
                return event
    raise AssertionError(f"the awaited event from {sender} never arrived")


async def nio_photo_round_trip(base):
    """matrix-nio uploads a photo and sends it; the other user finds the URL
    in the message event, downloads the photo byte for byte and gets a
    thumbnail of the size asked for."""
    alice = await registered(base, "alice")
    bob = await registered(base, "bob")
    try:
        created = await alice.room_create(name="Photos", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), f"room_create: {created}"
        room_id = created.room_id
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), f"join: {joined}"
        await bob.sync(timeout=0, sync_filter=SYNC_FILTER)

        photo = png(640, 480)
        uploaded, _ = await alice.upload(io.BytesIO(photo), content_type="image/png", filename="weekend.png", filesize=len(photo))
        assert isinstance(uploaded, UploadResponse), f"upload: {uploaded}"
        content = {
            "msgtype": "m.image",
            "body": "weekend.png",
            "url": uploaded.content_uri,
            "info": {"mimetype": "image/png", "size": len(photo), "w": 640, "h": 480},
        }
        sent = await alice.room_send(room_id, "m.room.message", content)
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"

        event = await wait_for_event(
            bob, room_id, alice.user_id, lambda e: isinstance(e, RoomMessageImage), time.monotonic() + 30
        )
        assert event.url == uploaded.content_uri, event.url
        got = await bob.download(mxc=event.url)
        assert isinstance(got, MemoryDownloadResponse), f"download: {got}"
        assert got.content_type == "image/png", got.content_type
        assert got.filename == "weekend.png", got.filename
        assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(photo).hexdigest(), "the photo changed"

        server_name, media_id = event.url[len("mxc://"):].split("/", 1)
        thumb = await bob.thumbnail(server_name, media_id, 320, 240, ResizingMethod.scale)
        assert isinstance(thumb, ThumbnailResponse), f"thumbnail: {thumb}"
        assert png_size(thumb.body) == (320, 240), png_size(thumb.body)
        crop = await bob.thumbnail(server_name, media_id, 96, 96, ResizingMethod.crop)
        assert isinstance(crop, ThumbnailResponse), f"thumbnail: {crop}"
        assert png_size(crop.body) == (96, 96), png_size(crop.body)
    finally:
        await alice.close()
        await bob.close()


async def commander_sends_a_file(base):
    """matrix-commander sends a file to a room; a matrix-nio user receives
    the m.file event and downloads the same bytes. matrix-commander encrypts
    attachments even in a clear-text room, so the download is decrypted with
    the key in the event, as a client would."""
    workdir = tempfile.mkdtemp()
    alice = None
    try:
        alice, room_id = await alice_and_commander_in_a_room(base, workdir, "files", "Files")
        data = os.urandom(300 * 1024)
        path = os.path.join(workdir, "minutes.bin")
        with open(path, "wb") as f:
            f.write(data)
        commander(base, workdir, "--file", path, "--room", "#files:localhost")

        # nio's parser wants `url` on m.file, which an encrypted attachment
        # has inside `file`; read the event as sent.
        event = await wait_for_event(
            alice, room_id, "@commander:localhost", lambda e: e.source["content"].get("msgtype") == "m.file",
            time.monotonic() + 30,
        )
        content = event.source["content"]
        assert content["body"] == "minutes.bin", content
        attachment = content.get("file")
        got = await alice.download(mxc=attachment["url"] if attachment else content["url"])
        assert isinstance(got, MemoryDownloadResponse), f"download: {got}"
        body = got.body
        if attachment:
            body = decrypt_attachment(body, attachment["key"]["k"], attachment["hashes"]["sha256"], attachment["iv"])
        assert body == data, f"{len(body)} bytes back, {len(data)} sent"
    finally:
        if alice is not None:
            await alice.close()
        subprocess.run(["rm", "-rf", workdir], check=False)


# The matrix-sdk scenario binary (tests/interop/sdk), built by scripts/test.
SDK_BINARY = None
# Its errors without a backtrace, so a failure's message fits the report.
SDK_ENV = dict(os.environ, RUST_LIB_BACKTRACE="0")


async def run_sdk(*args, timeout=100):
    """Runs the matrix-sdk scenario binary to its end; fails on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        SDK_BINARY, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=SDK_ENV
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        raise
    assert proc.returncode == 0, f"matrix-sdk {args[0]} exited {proc.returncode}: {err.decode()[-800:]}"
    return out.decode()


async def sdk_backup_and_verify(base):
    """matrix-sdk: two users chat in an encrypted room and verify each
    other's cross-signing identity; a second login of one of them recovers
    from secret storage and key backup and decrypts the earlier history.
    The scenario and its checks are in tests/interop/sdk/src/main.rs."""
    await run_sdk("backup-and-verify", base)


async def sdk_room_list(base):
    """matrix-sdk-ui (Element X's engine) over simplified sliding sync
    (MSC4186): a new device sees invites in its room list, joins, sees the
    rooms in recency order, reads a plain and an encrypted message in the
    timeline, and Room A's unread count (the server's too) drops to 0 after
    a read receipt. The scenario and its checks are in
    tests/interop/sdk/src/room_list.rs."""
    await run_sdk("room-list", base, "--server-counts")


async def nio_and_sdk_encrypted_room(base):
    """A matrix-nio user and a matrix-sdk user in one encrypted room: each
    decrypts the other's message."""
    store = tempfile.TemporaryDirectory()
    alice = await encrypted_client(base, "nioalice", store.name)
    sdk_user = await registered(base, "sdkuser")
    await sdk_user.close()
    sdk = None
    try:
        await e2e_sync(alice)
        room_id = await create_encrypted_room(alice, "Mixed", sdk_user.user_id)
        sdk = await asyncio.create_subprocess_exec(
            SDK_BINARY, "reply", base, "sdkuser", "pw-sdkuser", room_id, "hello matrix-sdk", "hello matrix-nio",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=SDK_ENV,
        )
        line = await asyncio.wait_for(sdk.stdout.readline(), 60)
        assert line == b"joined\n", f"matrix-sdk did not join: {line!r} {(await sdk.stderr.read()).decode()[-800:]}"

        # Send only once nio knows the matrix-sdk device, so the room key reaches it.
        deadline = time.monotonic() + 60
        while not list(alice.device_store.active_user_devices(sdk_user.user_id)):
            assert time.monotonic() < deadline, "matrix-nio never learned the matrix-sdk device"
            await e2e_sync(alice, timeout=1000)
        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hello matrix-sdk"}, ignore_unverified_devices=True
        )
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"
        await wait_for_text(alice, room_id, sdk_user.user_id, "hello matrix-nio", deadline)
        out, err = await asyncio.wait_for(sdk.communicate(), 30)
        assert sdk.returncode == 0, f"matrix-sdk exited {sdk.returncode}: {err.decode()[-800:]}"
        assert out == b"replied\n", out
    finally:
        if sdk is not None and sdk.returncode is None:
            sdk.kill()
            await sdk.wait()
        await alice.close()
        store.cleanup()


TESTS = [
    nio_account_basics,
    nio_wrong_password_is_refused,
    nio_two_users_chat,
    nio_encrypted_room,
    commander_through_an_alias,
    nio_photo_round_trip,
    commander_sends_a_file,
    sdk_backup_and_verify,
    nio_and_sdk_encrypted_room,
    sdk_room_list,
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--sdk-binary", required=True)
    parser.add_argument("only", nargs="*", help="run only these tests (by name)")
    args = parser.parse_args()
    global SDK_BINARY
    SDK_BINARY = args.sdk_binary
    passed = failed = 0
    for test in TESTS:
        if args.only and test.__name__ not in args.only:
            continue
        server = Conduit(args.binary)
        started = time.monotonic()
        try:
            asyncio.run(asyncio.wait_for(test(server.base), timeout=120))
            passed += 1
            print(f"ok   {test.__name__} ({time.monotonic() - started:.2f} s)")
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {test.__name__}: {e!r}")
        finally:
            server.stop()
    print(f"interop: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

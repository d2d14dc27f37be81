"""End-to-end encryption between two Conduits, judged by a real client:
matrix-nio users on two Conduit processes on loopback (conduit-a.test and
conduit-b.test, each serving HTTPS with a certificate of a CA made here and
trusting only that CA) share encrypted rooms. Device keys and device-list
updates, one-time key claims and the to-device messages that carry room
keys all cross between the servers; what a client decrypts is the check.

Prints 'N passed, N failed' and exits non-zero on any failure."""

import asyncio
import json
import logging
import os
import ssl
import tempfile
import time
import urllib.request

from harness import TlsConduit, free_ports, make_ca, opener, run_scenarios
from nio import (
    AsyncClient,
    AsyncClientConfig,
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    DeviceList,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RoomLeaveResponse,
    RoomMessageText,
    RoomSendResponse,
)
from nio.exceptions import EncryptionError
from run import create_encrypted_room, e2e_sync, encrypted_client

# Every wait is bounded: what takes longer than this to cross is lost.
EVENT_TIMEOUT = 30


class Pair:
    """Conduits A and B, each reaching the other by name over HTTPS."""

    def __init__(self, binary, workdir):
        ca = make_ca(workdir)
        tls = ssl.create_default_context(cafile=ca)
        port_a, port_b = free_ports(2)
        names = {"conduit-a.test": port_a, "conduit-b.test": port_b}
        self.a, self.b = (
            TlsConduit(
                binary, os.path.join(workdir, name), name, port, ca, tls,
                {other: f"https://127.0.0.1:{names[other]}" for other in names if other != name},
            )
            for name, port in names.items()
        )
        try:
            for server in (self.a, self.b):
                server.spawn(wait=False)
            for server in (self.a, self.b):
                server.wait_until_up()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for server in (self.a, self.b):
            server.stop()


class Clients:
    """The nio clients of one scenario, each with its own store directory;
    all closed and removed at its end."""

    def __init__(self):
        self.clients = []
        self.stores = []

    def store(self):
        self.stores.append(tempfile.TemporaryDirectory())
        return self.stores[-1].name

    def add(self, client):
        self.clients.append(client)
        return client

    async def registered(self, server, name):
        return self.add(await encrypted_client(server.base, name, self.store(), ssl=server.tls))

    async def second_login(self, server, user_id, device_name):
        """`user_id` (made by `registered`) logs in again: a new device with
        its own keys and store."""
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
        client = self.add(AsyncClient(server.base, user_id, store_path=self.store(), config=config, ssl=server.tls))
        login = await client.login(password_of(user_id), device_name=device_name)
        assert isinstance(login, LoginResponse), f"login {user_id}: {login}"
        await e2e_sync(client)
        return client

    async def close(self):
        for client in self.clients:
            await client.close()
        for store in self.stores:
            store.cleanup()


def password_of(user_id):
    """The password encrypted_client registered `user_id` with."""
    return "pw-" + user_id[1:].split(":", 1)[0]


def one_time_keys_left(server, client):
    """How many signed one-time keys the server still holds for the client's
    device (an empty keys/upload answers with the counts)."""
    request = urllib.request.Request(
        server.base + "/_matrix/client/v3/keys/upload",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {client.access_token}", "Content-Type": "application/json"},
    )
    with opener(server.tls).open(request, timeout=10) as response:
        return json.load(response)["one_time_key_counts"].get("signed_curve25519", 0)


def device_ids(client, user_id):
    """The devices of `user_id` that `client` knows and takes for current."""
    return {device.id for device in client.device_store.active_user_devices(user_id)}


async def sync_until(client, done, what):
    """Syncs (with nio's key work) until `done(lists)` holds, where `lists`
    gathers the device-list changes those syncs listed; returns `lists`."""
    lists = DeviceList(changed=[], left=[])
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not done(lists):
        assert time.monotonic() < deadline, f"{client.user_id}: {what}"
        resp = await e2e_sync(client, timeout=1000)
        lists.changed += resp.device_list.changed
        lists.left += resp.device_list.left
    return lists


async def send_texts(client, room_id, bodies):
    for body in bodies:
        sent = await client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
        )
        assert isinstance(sent, RoomSendResponse), f"{client.user_id} send: {sent}"


async def receive_texts(client, room_id, sender, expected):
    """Syncs until as many messages from `sender` as `expected` arrived in
    the room, all decrypted, and checks that they are `expected`: each once,
    in order. A message whose room key has not arrived yet is tried again
    after each sync, as clients do: the key travels as a to-device message,
    which nothing orders before the room event."""
    events = []
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        resp = await e2e_sync(client, timeout=1000)
        room = resp.rooms.join.get(room_id)
        events += [
            e for e in (room.timeline.events if room else [])
            if e.sender == sender and isinstance(e, (MegolmEvent, RoomMessageText))
        ]
        events = [retry_decryption(client, e) for e in events]
        encrypted = [e.event_id for e in events if isinstance(e, MegolmEvent)]
        if len(events) >= len(expected) and not encrypted:
            break
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{client.user_id} decrypted {[e.body for e in events if not isinstance(e, MegolmEvent)]}"
                f" of {expected}; still encrypted: {encrypted}"
            )
    bodies = [e.body for e in events]
    assert bodies == expected, f"{client.user_id} received {bodies}, expected {expected}"


def retry_decryption(client, event):
    if not isinstance(event, MegolmEvent):
        return event
    try:
        return client.decrypt_event(event)
    except EncryptionError:
        return event


async def encrypted_room_across(pair, n, clients):
    """Alice of A creates an encrypted room and invites Bob of B, who joins;
    each client then knows the other's device (keys/query across the
    servers). Returns both clients and the room ID."""
    alice = await clients.registered(pair.a, f"alice{n}")
    bob = await clients.registered(pair.b, f"bob{n}")
    for client in (alice, bob):
        await e2e_sync(client)
    room_id = await create_encrypted_room(alice, f"Across {n}", bob.user_id)
    await sync_until(bob, lambda _: room_id in bob.invited_rooms, "the invite never came")
    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), f"join: {joined}"
    await sync_until(
        alice,
        lambda _: room_id in alice.rooms
        and bob.user_id in alice.rooms[room_id].users
        and bob.user_id not in alice.rooms[room_id].invited_users,
        "never saw the join from the other server",
    )
    assert alice.rooms[room_id].encrypted, "alice's client does not see the room as encrypted"
    await sync_until(alice, lambda _: device_ids(alice, bob.user_id) == {bob.device_id}, "never learned bob's device")
    await sync_until(bob, lambda _: device_ids(bob, alice.user_id) == {alice.device_id}, "never learned alice's device")
    return alice, bob, room_id


async def messages_both_ways(pair, n, clients):
    """Alice of A and Bob of B each send three encrypted messages; the other
    decrypts them, each once and in order. Alice's first send starts an Olm
    session with Bob's device, which takes one of its one-time keys from B.
    Once Bob left, Alice's sync lists him in device_lists.left."""
    alice, bob, room_id = await encrypted_room_across(pair, n, clients)
    keys_before = one_time_keys_left(pair.b, bob)
    assert keys_before > 0, "bob's device uploaded no one-time keys"
    from_alice = [f"from conduit-a {i}" for i in range(3)]
    await send_texts(alice, room_id, from_alice)
    assert one_time_keys_left(pair.b, bob) == keys_before - 1, "alice's key claim did not reach bob's server"
    await receive_texts(bob, room_id, alice.user_id, from_alice)

    from_bob = [f"from conduit-b {i}" for i in range(3)]
    await send_texts(bob, room_id, from_bob)
    await receive_texts(alice, room_id, bob.user_id, from_bob)

    # Sharing no room any more, Alice's client stops tracking Bob's devices.
    left = await bob.room_leave(room_id)
    assert isinstance(left, RoomLeaveResponse), f"leave: {left}"
    await sync_until(alice, lambda lists: bob.user_id in lists.left, "never listed bob in device_lists.left")


async def new_device_then_deleted(owner_server, owner, peer_server, peer, room_id, clients):
    """`owner` logs in on a second device: `peer` (on the other server) sees
    the device-list change in its sync, finds the new device through a key
    query, and encrypts for it; the new device decrypts and answers. Then
    `owner` deletes that device, and `peer` sees it gone."""
    second = await clients.second_login(owner_server, owner.user_id, "second device")
    lists = await sync_until(
        peer, lambda _: device_ids(peer, owner.user_id) == {owner.device_id, second.device_id},
        "never learned of the new device",
    )
    assert owner.user_id in lists.changed, f"{peer.user_id}'s sync listed no device change of {owner.user_id}"

    # The room key reaches the new device through a new Olm session: a
    # one-time key claimed from the owner's server.
    keys_before = one_time_keys_left(owner_server, second)
    await send_texts(peer, room_id, ["for both devices"])
    assert one_time_keys_left(owner_server, second) == keys_before - 1, "no key was claimed for the new device"
    await receive_texts(second, room_id, peer.user_id, ["for both devices"])
    await receive_texts(owner, room_id, peer.user_id, ["for both devices"])

    # The new device encrypts for the peer (through the Olm session the
    # peer started; a new login on the peer's side claims the other way).
    await sync_until(
        second, lambda _: device_ids(second, peer.user_id) == {peer.device_id}, "the new device never learned the peer's"
    )
    await send_texts(second, room_id, ["from the new device"])
    await receive_texts(peer, room_id, owner.user_id, ["from the new device"])

    first = await owner.delete_devices([second.device_id])
    assert isinstance(first, DeleteDevicesAuthResponse), f"delete_devices: {first}"
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": owner.user_id},
        "password": password_of(owner.user_id),
        "session": first.session,
    }
    deleted = await owner.delete_devices([second.device_id], auth)
    assert isinstance(deleted, DeleteDevicesResponse), f"delete_devices: {deleted}"
    lists = await sync_until(
        peer, lambda _: device_ids(peer, owner.user_id) == {owner.device_id}, "never learned the device was deleted"
    )
    assert owner.user_id in lists.changed, f"{peer.user_id}'s sync listed no device change of {owner.user_id}"
    await send_texts(peer, room_id, ["after the deletion"])
    await receive_texts(owner, room_id, peer.user_id, ["after the deletion"])


async def new_device_on_b(pair, n, clients):
    """Bob of B logs in on a second device; Alice of A encrypts for it."""
    alice, bob, room_id = await encrypted_room_across(pair, n, clients)
    await send_texts(alice, room_id, ["before the new device"])
    await receive_texts(bob, room_id, alice.user_id, ["before the new device"])
    await new_device_then_deleted(pair.b, bob, pair.a, alice, room_id, clients)


async def new_device_on_a(pair, n, clients):
    """Alice of A logs in on a second device; Bob of B encrypts for it."""
    alice, bob, room_id = await encrypted_room_across(pair, n, clients)
    await send_texts(bob, room_id, ["before the new device"])
    await receive_texts(alice, room_id, bob.user_id, ["before the new device"])
    await new_device_then_deleted(pair.a, alice, pair.b, bob, room_id, clients)


SCENARIOS = [messages_both_ways, new_device_on_b, new_device_on_a]


async def run_scenario(scenario, pair, n):
    """Runs one scenario with fresh users, within a bounded time."""
    clients = Clients()
    try:
        await asyncio.wait_for(scenario(pair, n, clients), timeout=4 * EVENT_TIMEOUT)
    finally:
        await clients.close()


def main():
    # nio warns of every message it cannot decrypt yet, such as the history
    # a new device sees; the checks above say what matters.
    logging.getLogger("nio").setLevel(logging.ERROR)
    run_scenarios(
        "conduits", Pair, SCENARIOS,
        logs=[os.path.join(name, "conduit.log") for name in ("conduit-a.test", "conduit-b.test")],
        run=lambda scenario, pair, n: asyncio.run(run_scenario(scenario, pair, n)),
    )


if __name__ == "__main__":
    main()

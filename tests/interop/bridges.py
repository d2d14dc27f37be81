"""Bridge interop: heisenbridge (an IRC bridge, from PyPI) as an application
service of the homeserver (Conduit, or Synapse to prove the test itself),
ngircd (Debian's IRC server) and a tiny IRC client written here, all on
loopback.

What a person would do, and what is checked (`bridge_chat_across_restart`):
- A Matrix user opens a direct chat with the bridge bot (@heisenbridge),
  which joins; she adds a network and its server with the bot's commands
  (ADDNETWORK, ADDSERVER, OPEN), joins the network room it invites her to,
  connects (CONNECT: her nick comes online on IRC) and joins a channel
  (JOIN #family: the IRC client sees her join, the bridge invites her to
  the channel's room and she joins it).
- Matrix -> IRC: her message reaches the IRC client on the channel.
- IRC -> Matrix: the IRC client's reply reaches her room, sent by the
  bridge's puppet of the IRC user (a user ID in the bridge's exclusive
  namespace from its registration).
- The bridge is stopped for a while (--outage, 60 s by default); she sends
  a message in the middle of it. Once the bridge is back, the homeserver delivers it
  (application service transactions are kept and retried) and the IRC
  client reads it; then an IRC reply reaches her again.
- Nothing lost, nothing twice: at the end the IRC client has read exactly
  her messages, each once and in order, and her room has exactly the IRC
  user's messages from the puppet, each once and in order.

heisenbridge accepts a transaction and drops its messages (with a "Not
connected to network." notice) while it is still reconnecting to IRC after
a start. That window is the bridge's own, not the homeserver's, so the
homeserver reaches the bridge through a TCP gate here: it is shut while
the bridge is down and opens when the bridge is back on IRC (its nick has
rejoined the channel), so that to the homeserver the bridge comes back in
one step. The wait for the held message then covers the homeserver's
retry back-off (Synapse doubles it: 2, 4, ... 64 s).

The registration is heisenbridge's own `--generate` (Synapse's form: the
bot's user is not in its namespace, as the spec allows).

Run: python tests/interop/bridges.py [--homeserver conduit|synapse]
[--binary CONDUIT] [--outage SECONDS] [--keep] [SCENARIO...]; about two
minutes with the default outage. Prints ok/FAIL per scenario and
'N passed, N failed'; exits non-zero on any failure and then keeps the logs
(ngircd, heisenbridge, homeserver)."""

import argparse
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml  # PyYAML: Synapse needs it too, so the interop venv has it

# This directory's synapse.py (the federation interop test), not the
# Synapse package: its client helpers and Synapse config are reused here.
import harness
import synapse as interop
from run import Conduit

EVENT_TIMEOUT = interop.EVENT_TIMEOUT
START_TIMEOUT = harness.START_TIMEOUT
# How long after the bridge is back its held message may take: the
# homeserver's retry back-off at this point (Synapse's doubling reaches 64 s).
REDELIVERY_TIMEOUT = 100
NETWORK = "family"
CHANNEL = "#family"
# Debian puts it in /usr/sbin, which a user's PATH may lack.
NGIRCD = shutil.which("ngircd") or "/usr/sbin/ngircd"
IRC_NICK = "ircfriend"


class Ngircd:
    """ngircd in the foreground on a free loopback port, with a config,
    PID file and MOTD of its own: no PAM, ident, DNS or TLS."""

    def __init__(self, workdir):
        d = os.path.join(workdir, "ngircd")
        os.makedirs(d)
        self.port = harness.free_port()
        self.log = os.path.join(workdir, "ngircd.log")
        include = os.path.join(d, "conf.d")  # not the system's
        os.makedirs(include)
        with open(os.path.join(d, "motd"), "w") as f:
            f.write("bridge interop test\n")
        config = os.path.join(d, "ngircd.conf")
        with open(config, "w") as f:
            f.write(
                "[Global]\nName = irc.test\nInfo = bridge interop test\n"
                "AdminInfo1 = test\nAdminInfo2 = test\nAdminEMail = test@irc.test\n"
                f"Listen = 127.0.0.1\nPorts = {self.port}\n"
                f"PidFile = {d}/ngircd.pid\nMotdFile = {d}/motd\n"
                "[Limits]\nMaxConnectionsIP = 0\nMaxNickLength = 30\nPingTimeout = 120\n"
                f"[Options]\nDNS = no\nIdent = no\nPAM = no\nIncludeDir = {include}\n"
            )
        if os.getuid() == 0:
            # As root, ngircd drops to "nobody" after start-up; it then
            # writes its PID file here (main() lets it through the
            # directories above).
            nobody = pwd.getpwnam("nobody")
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [NGIRCD, "-n", "-p", "-f", config], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ngircd exited with {self.proc.returncode}:\n{harness.tail(self.log)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ngircd did not listen within {START_TIMEOUT} s:\n{harness.tail(self.log)}")
                time.sleep(0.1)

    def stop(self):
        harness.stop(self.proc)


def parse_irc(line):
    """(nick of the prefix or None, command, params) of one IRC line."""
    prefix = None
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    head, colon, trailing = line.partition(" :")
    params = head.split()
    command = params.pop(0).upper() if params else ""
    if colon:
        params.append(trailing)
    return (prefix.split("!", 1)[0] if prefix else None), command, params


class IrcClient:
    """A person on IRC: a socket, NICK/USER, PING answered; every line the
    server sends is kept, in order, for the test to look through."""

    def __init__(self, port, nick):
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=EVENT_TIMEOUT)
        self.sock.settimeout(None)
        self.lines = []
        self.changed = threading.Condition()
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :IRC test user")
        threading.Thread(target=self.read, daemon=True).start()
        self.wait_for(lambda m: m[1] == "001", "the IRC server's welcome")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def read(self):
        buffer = b""
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                with self.changed:
                    self.lines.append((None, "CLOSED", []))
                    self.changed.notify_all()
                return
            buffer += data
            while b"\r\n" in buffer:
                raw, buffer = buffer.split(b"\r\n", 1)
                message = parse_irc(raw.decode(errors="replace"))
                if message[1] == "PING":
                    self.send("PONG :" + (message[2][-1] if message[2] else ""))
                with self.changed:
                    self.lines.append(message)
                    self.changed.notify_all()

    def wait_for(self, predicate, what, timeout=EVENT_TIMEOUT, start=0):
        """The index of the first line from `start` on that matches."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for i in range(start, len(self.lines)):
                    if predicate(self.lines[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"IRC: {what} not seen within {timeout} s; last lines {self.lines[-8:]}")
                self.changed.wait(left)

    def channel_texts(self, sender):
        """The PRIVMSGs `sender` sent to the channel so far, in order."""
        with self.changed:
            return [m[2][1] for m in self.lines if m[1] == "PRIVMSG" and m[0] == sender and m[2][0] == CHANNEL]

    def online(self, nick):
        """Whether `nick` is on the server (ISON), asked now."""
        start = len(self.lines)
        self.send(f"ISON {nick}")
        i = self.wait_for(lambda m: m[1] == "303", "the ISON answer", start=start)
        return nick.lower() in self.lines[i][2][-1].lower().split()

    def stop(self):
        try:
            self.send("QUIT :bye")
        except OSError:
            pass
        self.sock.close()


class Gate:
    """A TCP forwarder on the port the homeserver knows the bridge by, to
    the port the bridge listens on. Shut, it refuses connections just as a
    stopped bridge does (see the module's docstring for why)."""

    def __init__(self, target_port):
        self.port = harness.free_port()
        self.target = target_port
        self.listener = None
        self.open_sockets = set()
        self.lock = threading.Lock()

    def open(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        threading.Thread(target=self.accept, args=(self.listener,), daemon=True).start()

    def accept(self, listener):
        while True:
            try:
                inbound, _ = listener.accept()
            except OSError:
                return  # shut
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                inbound.close()
                continue
            with self.lock:
                self.open_sockets.update((inbound, outbound))
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shut(self):
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.open_sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.open_sockets.clear()


class Heisenbridge:
    """heisenbridge with a registration made by its own --generate, reached
    by the homeserver through a Gate."""

    def __init__(self, workdir):
        self.listen_port = harness.free_port()
        self.gate = Gate(self.listen_port)
        self.registration = os.path.join(workdir, "heisenbridge.yaml")
        self.log = os.path.join(workdir, "heisenbridge.log")
        made = subprocess.run(
            [sys.executable, "-m", "heisenbridge", "-c", self.registration, "--generate",
             "-l", "127.0.0.1", "-p", str(self.gate.port)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=START_TIMEOUT,
        )
        assert made.returncode == 0, f"heisenbridge --generate: {made.stdout}{made.stderr}"
        with open(self.registration) as f:
            registration = yaml.safe_load(f)
        self.bot_localpart = registration["sender_localpart"]
        self.puppet_regexes = [n["regex"] for n in registration["namespaces"]["users"]]
        self.proc = None

    def start(self, homeserver):
        """Starts the bridge against `homeserver` (a base URL) and waits
        until it says it is running; the gate stays as it is."""
        with open(self.log, "a") as log:
            runs_before = harness.tail(self.log, 100000).count("bridge is now running")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "heisenbridge", "-c", self.registration, "-l", "127.0.0.1",
                 "-p", str(self.listen_port), "-v", homeserver],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=harness.clean_env(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while harness.tail(self.log, 100000).count("bridge is now running") == runs_before:
            if self.proc.poll() is not None:
                raise RuntimeError(f"heisenbridge exited with {self.proc.returncode}:\n{harness.tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"heisenbridge did not start within {START_TIMEOUT} s:\n{harness.tail(self.log)}")
            time.sleep(0.2)

    def stop(self):
        self.gate.shut()
        if self.proc is not None:
            harness.stop(self.proc)
            self.proc = None

    def is_puppet(self, user_id):
        return any(re.fullmatch(regex, user_id) for regex in self.puppet_regexes)


class Homeserver:
    """Conduit or Synapse on loopback, with the bridge's registration
    among its application services."""

    def __init__(self, kind, binary, workdir, registration):
        self.log = os.path.join(workdir, f"{kind}.log")
        self.conduit = self.synapse = None
        if kind == "conduit":
            self.conduit = Conduit(
                binary, f'app_service_config_files = ["{registration}"]\n', log_file=self.log
            )
            self.base = self.conduit.base
            self.server_name = "localhost"  # the one run.Conduit configures
        else:
            port = harness.free_port()
            d = os.path.join(workdir, "synapse")
            command = interop.synapse_config(d, port, self.log, {"app_service_config_files": [registration]})
            with open(os.path.join(workdir, "synapse-stderr.log"), "a") as log:
                self.synapse = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d,
                    env=harness.clean_env(),
                )
            self.base = f"http://127.0.0.1:{port}"
            self.server_name = f"127.0.0.1:{port}"
            harness.wait_until_up(self.base + "/_matrix/client/versions", self.synapse, self.log, "synapse")

    def stop(self):
        if self.conduit is not None:
            self.conduit.stop()
        if self.synapse is not None:
            harness.stop(self.synapse)


class Setup:
    """ngircd with an IRC user on the channel, the homeserver and the bridge,
    started in the order each needs the others."""

    def __init__(self, kind, binary, workdir):
        self.ngircd = self.irc = self.bridge = self.homeserver = None
        try:
            self.ngircd = Ngircd(workdir)
            self.irc = IrcClient(self.ngircd.port, IRC_NICK)
            self.irc.send(f"JOIN {CHANNEL}")
            self.irc.wait_for(lambda m: m[1] == "366", f"the IRC user's join of {CHANNEL}")
            self.bridge = Heisenbridge(workdir)
            self.homeserver = Homeserver(kind, binary, workdir, self.bridge.registration)
            self.bridge.gate.open()
            self.bridge.start(self.homeserver.base)
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for part in (self.bridge, self.homeserver, self.irc, self.ngircd):
            if part is not None:
                part.stop()


# --- Matrix side: what the person does in her client. ---


def invited_room(client, name, what):
    """Waits for an invite to a room called `name` (the bridge names its
    rooms) and joins it; returns its ID. Invites seen while waiting for
    another stay known to later calls."""
    known = client.__dict__.setdefault("invites", {})

    def note_invites(answer):
        for room_id, room in answer.get("rooms", {}).get("invite", {}).items():
            for event in room.get("invite_state", {}).get("events", []):
                if event.get("type") == "m.room.name":
                    known[event.get("content", {}).get("name")] = room_id
        return name in known

    if name not in known:
        client.sync_until(note_invites, what)
    room_id = known[name]
    client.call("POST", f"/_matrix/client/v3/join/{interop.enc(room_id)}", {})
    return room_id


def wait_for_notice(client, room_id, sender, text, what):
    """Waits for a notice from `sender` in the room that contains `text`."""
    interop.poll(
        lambda: [body or "" for who, body in client.texts(room_id) if who == sender],
        lambda seen: any(text in body for body in seen),
        f"{what}: no notice with {text!r} from {sender}",
    )


def command(client, room_id, bot, line, answer):
    """Sends the bot a command line and waits for its answer."""
    client.send_text(room_id, line)
    wait_for_notice(client, room_id, bot, answer, line)


def texts_from(client, room_id, predicate):
    return [body for sender, body in client.texts(room_id) if predicate(sender)]


def wait_for_puppet_texts(client, room_id, bridge, expected, what):
    """Waits until the room's messages from the bridge's puppets are
    exactly `expected`, each once and in this order."""
    interop.poll(
        lambda: texts_from(client, room_id, bridge.is_puppet), lambda seen: seen == expected,
        f"{what}: expected {expected} from puppets",
    )


def wait_for_irc_texts(irc, nick, expected, what, timeout=EVENT_TIMEOUT):
    """Waits until `nick`'s channel messages on IRC are exactly `expected`."""
    interop.poll(
        lambda: irc.channel_texts(nick), lambda seen: seen == expected,
        f"{what}: IRC expected {expected} from {nick}", timeout=timeout,
    )


def step(what, started):
    print(f"     {what} ({time.monotonic() - started:.1f} s)", flush=True)


def bridge_chat_across_restart(setup, outage):
    """See the module's docstring."""
    started = time.monotonic()
    hs, irc, bridge = setup.homeserver, setup.irc, setup.bridge
    bot = f"@{bridge.bot_localpart}:{hs.server_name}"
    alice = interop.register(hs.base, "alice")
    nick = "alice"  # heisenbridge's default nick: her localpart

    control = alice.call(
        "POST", "/_matrix/client/v3/createRoom",
        {"preset": "trusted_private_chat", "is_direct": True, "invite": [bot]},
    )["room_id"]
    alice.wait_for_members(control, [alice.user_id, bot], "the bridge bot joins her direct chat")
    command(alice, control, bot, f"ADDNETWORK {NETWORK}", "Network added.")
    command(alice, control, bot, f"ADDSERVER {NETWORK} 127.0.0.1 {setup.ngircd.port}", "Server added.")
    command(alice, control, bot, f"OPEN {NETWORK}", f"You have been invited to {NETWORK}")
    network = invited_room(alice, NETWORK, "the invite to the network room")
    step("control room: network added, network room joined", started)

    command(alice, network, bot, "CONNECT", f"Connecting to 127.0.0.1:{setup.ngircd.port}")
    interop.poll(lambda: irc.online(nick), bool, f"{nick} coming online on IRC")
    start = len(irc.lines)
    alice.send_text(network, f"JOIN {CHANNEL}")
    irc.wait_for(lambda m: m[0] == nick and m[1] == "JOIN", f"{nick} joining {CHANNEL}", start=start)
    # heisenbridge names a channel's room "#channel (network)".
    channel = invited_room(alice, f"{CHANNEL} ({NETWORK})", "the invite to the channel's room")
    alice.wait_for_members(channel, [alice.user_id, bot], "her join of the channel's room")
    step(f"connected; {CHANNEL} joined on IRC and in Matrix", started)

    alice.send_text(channel, "hello from matrix")
    wait_for_irc_texts(irc, nick, ["hello from matrix"], "Matrix -> IRC")
    irc.send(f"PRIVMSG {CHANNEL} :hello from irc")
    wait_for_puppet_texts(alice, channel, bridge, ["hello from irc"], "IRC -> Matrix")
    puppets = {s for s, b in alice.texts(channel) if b == "hello from irc"}
    assert len(puppets) == 1, f"the reply came from {puppets}"
    step(f"messages both ways; the IRC user is {puppets.pop()}", started)

    # The outage: the bridge stops (its nick leaves IRC), she writes in
    # the middle of it, and it comes back.
    start = len(irc.lines)
    down = time.monotonic()
    bridge.stop()
    irc.wait_for(lambda m: m[0] == nick and m[1] == "QUIT", f"{nick} leaving IRC with the bridge", start=start)
    time.sleep(max(0.0, down + outage / 2 - time.monotonic()))
    alice.send_text(channel, "sent while the bridge was down")
    time.sleep(max(0.0, down + outage - time.monotonic()))
    start = len(irc.lines)
    bridge.start(hs.base)
    irc.wait_for(lambda m: m[0] == nick and m[1] == "JOIN", f"{nick} back on {CHANNEL}", start=start)
    bridge.gate.open()
    step(f"bridge down for {time.monotonic() - down:.0f} s and back on IRC", started)

    wait_for_irc_texts(
        irc, nick, ["hello from matrix", "sent while the bridge was down"], "the message held over the outage",
        timeout=REDELIVERY_TIMEOUT,
    )
    step("the message sent meanwhile reached IRC", started)
    irc.send(f"PRIVMSG {CHANNEL} :glad you are back")
    wait_for_puppet_texts(
        alice, channel, bridge, ["hello from irc", "glad you are back"], "IRC -> Matrix after the restart"
    )

    # Nothing arrives twice a little later either.
    time.sleep(3)
    assert irc.channel_texts(nick) == ["hello from matrix", "sent while the bridge was down"], irc.channel_texts(nick)
    assert texts_from(alice, channel, bridge.is_puppet) == ["hello from irc", "glad you are back"]
    mine = texts_from(alice, channel, lambda s: s == alice.user_id)
    assert mine == ["hello from matrix", "sent while the bridge was down"], mine


SCENARIOS = [bridge_chat_across_restart]
ALL = {f.__name__: f for f in SCENARIOS}


def main():
    parser = argparse.ArgumentParser(description="heisenbridge + ngircd interop")
    parser.add_argument("--binary", help="the conduit binary (for --homeserver conduit)")
    parser.add_argument("--homeserver", choices=["conduit", "synapse"], default="conduit")
    parser.add_argument("--outage", type=float, default=60, help="seconds the bridge is down (default 60)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and directories")
    parser.add_argument("scenario", nargs="*", help=f"only these scenarios (default: all of {list(ALL)})")
    args = parser.parse_args()
    if args.homeserver == "conduit" and not args.binary:
        parser.error("--binary is needed with --homeserver conduit")
    chosen = [ALL[name] for name in args.scenario] if args.scenario else SCENARIOS
    binary = os.path.abspath(args.binary) if args.binary else None
    workdir = tempfile.mkdtemp(prefix="conduit-bridges-")
    os.chmod(workdir, 0o711)  # for ngircd's PID file (see Ngircd)

    def run(scenario, scenario_dir):
        started = time.monotonic()
        setup = Setup(args.homeserver, binary, scenario_dir)
        try:
            step(f"ngircd, {args.homeserver} and heisenbridge up", started)
            scenario(setup, args.outage)
        finally:
            setup.stop()

    # 0o711: for ngircd's PID file (see Ngircd).
    harness.run_in_dirs(f"bridges interop ({args.homeserver})", chosen, workdir, args.keep, run, mode=0o711)

if __name__ == "__main__":
    main()

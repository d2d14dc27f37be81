"""Local joins of one room, as a bridge makes them: an appservice registers
N users and joins each to one public room, one join at a time; then one of
them sends messages there. Not a test: it prints figures.

Per quarter of the joins: the time they took and the server's VmRSS and
VmHWM after them; then the time of the sends and the data directory's size.
With --people the appservice's namespace is not exclusive, so its users'
push rules are evaluated like a person's (a bridge's own users', those of an
exclusive namespace, are not); that stands for a room of N people without
hashing N passwords.

    python3 tools/bench/local_joins.py --binary path/to/conduit \
        [--members 2000] [--messages 200] [--people]

Loopback only; every request has a timeout and every loop a bound.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

AS_TOKEN = "bench_as_token"
PORT = 18191


def call(base, method, path, body=None):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {AS_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def memory_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "VmHWM")))
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def main():
    parser = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/conduit-target"))
    parser.add_argument("--binary", default=os.path.join(target, "release", "conduit"))
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--people", action="store_true")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="local-joins-")
    exclusive = "false" if args.people else "true"
    with open(f"{workdir}/bench.yaml", "w") as f:
        f.write(
            f"id: bench\nurl: null\nas_token: {AS_TOKEN}\nhs_token: bench_hs_token\n"
            "sender_localpart: benchbot\nrate_limited: false\nnamespaces:\n"
            f"  users:\n  - regex: '@p_.*'\n    exclusive: {exclusive}\n  aliases: []\n  rooms: []\n"
        )
    with open(f"{workdir}/conduit.toml", "w") as f:
        f.write(
            f'[global]\nserver_name = "localhost"\nport = {PORT}\n'
            f'database_path = "{workdir}/db"\nlog = "warn"\nrate_limits.enabled = false\n'
            f'app_service_config_files = ["{workdir}/bench.yaml"]\n'
        )
    server = subprocess.Popen([args.binary, "-c", f"{workdir}/conduit.toml"])
    base = f"http://127.0.0.1:{PORT}"
    try:
        for _ in range(500):
            try:
                urllib.request.urlopen(base + "/_matrix/client/versions", timeout=1)
                break
            except OSError:
                time.sleep(0.02)
        else:
            sys.exit("the server did not answer within 10 s")
        room = call(base, "POST", "/_matrix/client/v3/createRoom?user_id=@benchbot:localhost", {"preset": "public_chat"})[
            "room_id"
        ]
        users = [f"p_{i}" for i in range(args.members)]
        started = time.monotonic()
        for user in users:
            call(
                base,
                "POST",
                "/_matrix/client/v3/register",
                {"type": "m.login.application_service", "username": user, "inhibit_login": True},
            )
        print(f"kind: {'people' if args.people else 'bridge users'}")
        print(f"register {args.members}: {time.monotonic() - started:.1f} s")
        quarter = max(1, args.members // 4)
        started, last = time.monotonic(), 0
        for i, user in enumerate(users, 1):
            call(base, "POST", f"/_matrix/client/v3/join/{room}?user_id=@{user}:localhost", {})
            if i % quarter == 0 or i == len(users):
                rss, hwm = memory_kib(server.pid)
                took = time.monotonic() - started
                print(
                    f"joins {last + 1}-{i}: {took:.1f} s ({took / (i - last) * 1000:.1f} ms each), "
                    f"RSS {rss / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB"
                )
                started, last = time.monotonic(), i
        started = time.monotonic()
        for i in range(args.messages):
            call(
                base,
                "PUT",
                f"/_matrix/client/v3/rooms/{room}/send/m.room.message/bench{i}?user_id=@p_0:localhost",
                {"msgtype": "m.text", "body": f"message {i}"},
            )
        took = time.monotonic() - started
        print(f"{args.messages} sends: {took:.1f} s ({took / max(1, args.messages) * 1000:.1f} ms each)")
        rss, hwm = memory_kib(server.pid)
        print(f"RSS {rss / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB")
        size = subprocess.run(["du", "-sk", f"{workdir}/db"], capture_output=True, text=True).stdout.split()[0]
        print(f"data directory: {int(size) / 1024:.1f} MiB")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

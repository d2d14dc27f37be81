"""Interop tests: real Matrix clients that nobody here wrote, against a fresh
Conduit on a loopback port. Prints 'N passed, N failed' and exits non-zero on
any failure."""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from nio import AsyncClient, DevicesResponse, LoginResponse, ProfileGetDisplayNameResponse, RegisterResponse


class Conduit:
    """The real binary with its own data directory; port chosen by the OS."""

    def __init__(self, binary):
        self.dir = tempfile.TemporaryDirectory()
        config = os.path.join(self.dir.name, "conduit.toml")
        with open(config, "w") as f:
            f.write(
                '[global]\nserver_name = "localhost"\naddress = "127.0.0.1"\nport = 0\n'
                f'database_path = "{self.dir.name}/db"\nargon2_memory_kib = 64\nargon2_iterations = 1\n'
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        self.proc = subprocess.Popen([binary, "-c", config], stderr=subprocess.PIPE, text=True, env=env)
        self.base = None
        found = threading.Event()

        def read_log():
            for line in self.proc.stderr:
                m = re.search(r"listening on (http://\S+)", line)
                if m and not found.is_set():
                    self.base = m.group(1)
                    found.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("conduit did not start within 30 s")

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


TESTS = [nio_account_basics, nio_wrong_password_is_refused]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args = parser.parse_args()
    passed = failed = 0
    for test in TESTS:
        server = Conduit(args.binary)
        started = time.monotonic()
        try:
            asyncio.run(asyncio.wait_for(test(server.base), timeout=60))
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

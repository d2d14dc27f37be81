"""Admin API interop: the tools a Synapse operator uses, against Conduit.

- Synapse's `register_new_matrix_user` (from the matrix-synapse package)
  creates the first admin with the shared secret (`registration_shared_secret`,
  the HMAC nonce flow of `/_synapse/admin/v1/register`), with open
  registration off.
- `synadm` (PyPI), configured with a file written here and run without a
  terminal (`--batch`), then does what an operator would
  (`operator_manages_users`): adds a user with a password and a display
  name (`user modify`), lists users and finds them there, the new user logs
  in with that password, the operator deactivates them (`user deactivate`),
  and the list shows them marked deactivated (and hides them without `-d`),
  as does `user details`.

Run: python tests/interop/admin.py --binary CONDUIT [--keep] [SCENARIO...].
Prints ok/FAIL per scenario and 'N passed, N failed'; exits non-zero on any
failure and then keeps the logs."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml  # PyYAML: synadm and Synapse need it too, so the interop venv has it

import harness
from run import Conduit

SECRET = "interop shared secret"
# Each tool run is a few HTTP requests on loopback.
TOOL_TIMEOUT = 60
BIN = os.path.dirname(sys.executable)


def tool_env(home):
    """The environment for the tools: their own home (synadm keeps a debug
    log under ~/.local), nothing else of ours."""
    env = harness.clean_env()
    env["HOME"] = home
    return env


def run_tool(args, home, what):
    """Runs a tool to the end (bounded, no stdin) and returns its stdout;
    raises with its output if it fails."""
    done = subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=tool_env(home)
    )
    if done.returncode != 0:
        raise AssertionError(f"{what} exited {done.returncode}: {done.stdout}\n{done.stderr}")
    return done.stdout


def last_json(output, what):
    """The JSON document that ends a synadm output (some commands print
    the settings they are about to change first)."""
    # A document starts with "{" at the start of a line; nested ones are indented.
    newline = output.rfind("\n{")
    start = newline + 1 if newline >= 0 else 0 if output.startswith("{") else -1
    if start < 0:
        raise AssertionError(f"{what}: no JSON in {output!r}")
    return json.loads(output[start:])


def http(base, method, path, body=None, token=None):
    """A JSON request; (status, body)."""
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def login(base, user, password):
    return http(base, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    })


class Setup:
    """A Conduit with open registration off and a shared secret, an admin
    made with `register_new_matrix_user`, and a synadm config for them."""

    def __init__(self, binary, workdir):
        self.workdir = workdir
        self.log = os.path.join(workdir, "conduit.log")
        self.conduit = Conduit(
            binary,
            f"allow_registration = false\nregistration_shared_secret = {json.dumps(SECRET)}\n",
            log_file=self.log,
        )
        self.base = self.conduit.base
        try:
            run_tool(
                [os.path.join(BIN, "register_new_matrix_user"), "-u", "operator", "-p", "operator-pw",
                 "-a", "-k", SECRET, self.base],
                workdir, "register_new_matrix_user",
            )
            status, body = login(self.base, "operator", "operator-pw")
            assert status == 200, f"the admin made with the shared secret cannot log in: {status} {body}"
            self.config = os.path.join(workdir, "synadm.yaml")
            with open(self.config, "w") as f:
                yaml.safe_dump({
                    "user": "@operator:localhost",
                    "token": body["access_token"],
                    "protocol": "http",
                    "base_url": self.base,
                    "admin_path": "/_synapse/admin",
                    "matrix_path": "/_matrix",
                    "timeout": 30,
                    "server_discovery": "well-known",
                    # The server's name as run.Conduit configures it: no discovery.
                    "homeserver": "localhost",
                    "ssl_verify": False,
                    "format": "json",
                }, f)
        except BaseException:
            self.conduit.stop()
            raise

    def synadm(self, *args):
        """synadm as an operator scripts it: our config, no prompts, JSON out."""
        command = [os.path.join(BIN, "synadm"), "-c", self.config, "--batch", "-o", "json", *args]
        return run_tool(command, self.workdir, f"synadm {' '.join(args)}")

    def listed(self, *flags):
        """`synadm user list` as {user ID: its entry}, checking the total."""
        listing = last_json(self.synadm("user", "list", *flags), "user list")
        users = {u["name"]: u for u in listing["users"]}
        assert listing["total"] == len(users), listing
        return users

    def stop(self):
        self.conduit.stop()


def operator_manages_users(setup):
    admin = setup.listed()
    assert admin["@operator:localhost"]["admin"] is True, admin

    setup.synadm("user", "modify", "bob", "-P", "bob-pw", "-n", "Bob Builder")
    users = setup.listed()
    assert "@bob:localhost" in users, f"the new user is not listed: {sorted(users)}"
    bob = users["@bob:localhost"]
    assert bob["displayname"] == "Bob Builder" and bob["deactivated"] is False and bob["admin"] is False, bob
    status, body = login(setup.base, "bob", "bob-pw")
    assert status == 200, f"the new user cannot log in: {status} {body}"

    setup.synadm("user", "deactivate", "@bob:localhost")
    assert "@bob:localhost" not in setup.listed(), "a deactivated user is listed without -d"
    everyone = setup.listed("-d")
    assert everyone["@bob:localhost"]["deactivated"] is True, everyone
    details = last_json(setup.synadm("user", "details", "@bob:localhost"), "user details")
    assert details["deactivated"] is True, details
    status, body = login(setup.base, "bob", "bob-pw")
    assert status == 403, f"a deactivated user logged in: {status} {body}"


SCENARIOS = [operator_manages_users]
ALL = {f.__name__: f for f in SCENARIOS}


def main():
    parser = argparse.ArgumentParser(description="synadm and register_new_matrix_user against Conduit")
    parser.add_argument("--binary", required=True, help="the conduit binary")
    parser.add_argument("--keep", action="store_true", help="keep the logs and directories")
    parser.add_argument("scenario", nargs="*", help=f"only these scenarios (default: all of {list(ALL)})")
    args = parser.parse_args()
    unknown = [name for name in args.scenario if name not in ALL]
    if unknown:
        parser.error(f"no scenario {unknown}; there are {list(ALL)}")
    chosen = [ALL[name] for name in args.scenario] if args.scenario else SCENARIOS
    binary = os.path.abspath(args.binary)
    workdir = tempfile.mkdtemp(prefix="conduit-admin-")

    def run(scenario, scenario_dir):
        started = time.monotonic()
        setup = Setup(binary, scenario_dir)
        try:
            print(f"     conduit up, admin registered ({time.monotonic() - started:.2f} s)", flush=True)
            scenario(setup)
        finally:
            setup.stop()

    harness.run_in_dirs("admin interop", chosen, workdir, args.keep, run)


if __name__ == "__main__":
    main()

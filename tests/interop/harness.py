"""What the federation interop scripts (synapse.py, conduits.py) share:
loopback ports, certificates made with openssl, and Conduit processes that
serve HTTPS. Every wait is bounded."""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# A server that takes longer than this to answer after its start is broken.
START_TIMEOUT = 60


def free_port():
    """A free loopback port (another process could take it before the
    server binds it; the run would then fail to start, not pass wrongly)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count):
    """`count` distinct free loopback ports."""
    ports = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def clean_env():
    """The environment without proxy settings: the servers talk to each
    other on loopback, never through a proxy."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def stop(proc):
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def opener(tls=None):
    """A urllib opener that never uses a proxy (everything here is on
    loopback) and checks HTTPS certificates with the `tls` context."""
    handlers = [urllib.request.ProxyHandler({})]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    return urllib.request.build_opener(*handlers)


def wait_until_up(url, proc, log, what, tls=None):
    """Waits until `url` answers 200; fails if `proc` exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    urls = opener(tls)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urls.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer within {START_TIMEOUT} s:\n{tail(log)}")


def openssl(directory, *args):
    made = subprocess.run(
        ["openssl", *args], cwd=directory, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30
    )
    assert made.returncode == 0, f"openssl {args[0]}: {made.stderr}"


# A new P-256 key, unencrypted, and two days of validity.
NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]


def make_ca(directory):
    """A certificate authority in `directory`; returns its certificate's path
    (its key is ca.key beside it)."""
    openssl(
        directory, "req", "-x509", *NEW_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=interop-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    return os.path.join(directory, "ca.pem")


def make_cert(directory, names, ca):
    """A server certificate in `directory` for `names` (subjectAltName
    entries such as DNS:a.test or IP:127.0.0.1), signed by the CA whose
    certificate is `ca`; returns the paths of the certificate and its key."""
    with open(os.path.join(directory, "cert.ext"), "w") as f:
        f.write(f"subjectAltName={','.join(names)}\nbasicConstraints=critical,CA:FALSE\n")
    common_name = names[0].split(":", 1)[1]
    openssl(directory, "req", "-new", *NEW_KEY, "-keyout", "key.pem", "-out", "cert.csr", "-subj", f"/CN={common_name}")
    ca_key = os.path.join(os.path.dirname(ca), "ca.key")
    openssl(
        directory, "x509", "-req", "-days", "2", "-in", "cert.csr", "-extfile", "cert.ext", "-out", "cert.pem",
        "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
    )
    return os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")


class TlsConduit:
    """A Conduit process named `server_name`, serving HTTPS on
    127.0.0.1:`port` with a certificate of the CA `ca` for its name and
    127.0.0.1 (its data, config and log in `directory`). `overrides` says where other
    servers are (server name → URL); their certificates are checked against
    `ca` too. `tls` is the client side's context that trusts `ca`."""

    def __init__(self, binary, directory, server_name, port, ca, tls, overrides):
        os.makedirs(directory)
        self.server_name = server_name
        self.base = f"https://127.0.0.1:{port}"
        self.log = os.path.join(directory, "conduit.log")
        self.tls = tls
        self.proc = None
        names = ["IP:127.0.0.1"] if server_name.startswith("127.0.0.1:") else [f"DNS:{server_name}", "IP:127.0.0.1"]
        cert, key = make_cert(directory, names, ca)
        config = os.path.join(directory, "conduit.toml")
        with open(config, "w") as f:
            f.write(
                "[global]\n"
                f'server_name = "{server_name}"\naddress = "127.0.0.1"\nport = {port}\n'
                f'database_path = "{directory}/db"\nargon2_memory_kib = 64\nargon2_iterations = 1\n'
                f'allow_federation = true\ntrusted_servers = []\nfederation_ca_files = ["{ca}"]\n'
                'log = "warn,conduit=debug"\n'
                # Test clients send and register faster than people do.
                "rate_limits.enabled = false\n"
                "[global.federation_destination_overrides]\n"
                + "".join(f'"{name}" = "{url}"\n' for name, url in overrides.items())
                + f'[global.tls]\ncerts = "{cert}"\nkey = "{key}"\n'
            )
        self.command = [binary, "-c", config]

    def spawn(self, wait=True):
        env = {k: v for k, v in clean_env().items() if not k.startswith("CONDUIT_")}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        if wait:
            self.wait_until_up()

    def wait_until_up(self):
        wait_until_up(self.base + "/_matrix/client/versions", self.proc, self.log, self.server_name, self.tls)

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def run_scenarios(title, start, scenarios, pending=(), logs=(), run=None):
    """The command line of a federation interop script: `--binary`, `--keep`
    and scenario names (by default all of `scenarios`; those of `pending`,
    which need what Conduit does not do yet, only by name). `start(binary,
    workdir)` starts the servers (an object with `stop()`); `run(scenario,
    servers, n)` runs one (by default `scenario(servers, n)`). On a failure
    prints the ends of the `logs` (paths in the workdir). Prints 'N passed,
    N failed' and exits non-zero on any failure."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True, help="the conduit binary")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directories and logs")
    also = f"; also {[f.__name__ for f in pending]}" if pending else ""
    parser.add_argument("scenario", nargs="*", help=f"only these scenarios (default: all that pass{also})")
    args = parser.parse_args()
    by_name = {f.__name__: f for f in [*scenarios, *pending]}
    unknown = [name for name in args.scenario if name not in by_name]
    if unknown:
        parser.error(f"no scenario {unknown}; there are {list(by_name)}")
    chosen = [by_name[name] for name in args.scenario] if args.scenario else scenarios
    run = run or (lambda scenario, servers, n: scenario(servers, n))
    workdir = tempfile.mkdtemp(prefix=f"conduit-{title}-")
    passed = failed = 0
    servers = None
    try:
        started = time.monotonic()
        servers = start(os.path.abspath(args.binary), workdir)
        print(f"servers up ({time.monotonic() - started:.2f} s)")
        for n, scenario in enumerate(chosen):
            started = time.monotonic()
            try:
                run(scenario, servers, n)
                passed += 1
                print(f"ok   {scenario.__name__} ({time.monotonic() - started:.2f} s)")
            except Exception as e:  # noqa: BLE001 - report every failure and go on
                failed += 1
                # A time-out has no message of its own.
                print(f"FAIL {scenario.__name__}: {str(e) or repr(e)}")
    except Exception as e:  # noqa: BLE001
        failed += 1
        print(f"FAIL start: {e}")
    finally:
        if servers is not None:
            servers.stop()
    if failed:
        for name in logs:
            print(f"--- last lines of {name} ---\n{tail(os.path.join(workdir, name))}")
    print(f"{title} interop: {passed} passed, {failed} failed")
    if args.keep or failed:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


def run_scenario(name, body):
    """Runs `body()`, prints ok or FAIL with the time taken and returns
    whether it passed (for scripts with a command line of their own)."""
    started = time.monotonic()
    try:
        body()
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        print(f"FAIL {name}: {str(e) or repr(e)}", flush=True)
        return False
    print(f"ok   {name} ({time.monotonic() - started:.2f} s)", flush=True)
    return True


def run_in_dirs(label, chosen, workdir, keep, run, mode=0o700):
    """Runs each scenario of `chosen` as `run(scenario, directory)`, in a
    directory of its own under `workdir` (made with `mode`), then ends as
    `finish` does, with the last lines of every `.log` below `workdir` on a
    failure (for scripts with a command line of their own)."""
    passed = failed = 0
    for scenario in chosen:
        directory = os.path.join(workdir, scenario.__name__)
        os.makedirs(directory, mode=mode)
        if run_scenario(scenario.__name__, lambda: run(scenario, directory)):
            passed += 1
        else:
            failed += 1
    logs = [os.path.join(root, name) for root, _, files in os.walk(workdir) for name in sorted(files)
            if name.endswith(".log")]
    finish(label, passed, failed, workdir, keep, logs)


def finish(label, passed, failed, workdir, keep, logs):
    """Ends a run: on failure the last lines of each of `logs`; the
    'N passed, N failed' line; `workdir` kept (if `keep` or on failure) or
    removed; the exit code."""
    if failed:
        for path in logs:
            print(f"--- last lines of {os.path.relpath(path, workdir)} ---\n{tail(path)}")
    print(f"{label}: {passed} passed, {failed} failed")
    if keep or failed:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)

#!/usr/bin/env bash
# The Debian package, installed for real: builds it from the debug binary
# the test suite built, installs it with dpkg, checks its files and user,
# starts the unit's command line by hand as the unit's user (CI runs no
# systemd), registers a user on it, verifies the unit with systemd-analyze,
# parses the Nix files, then purges the package: the config goes, the data
# stays. Needs root (sudo otherwise); meant for a throwaway CI machine, and
# leaves an installation it did not make alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/build-deps   # as_root

binary="${CARGO_TARGET_DIR:-$HOME/.cache/conduit-target}/debug/conduit"
data=/var/lib/matrix-conduit
config=/etc/matrix-conduit/conduit.toml
unit=/lib/systemd/system/matrix-conduit.service
# Written into the data directory after installing: what carries it was
# installed by this test, and may be purged and deleted by the next run.
marker="$data/.installed-by-packaging-test"

fail() {
    echo "packaging test: $*" >&2
    if [ -s "${log:-}" ]; then tail -n 20 "$log" >&2; fi
    exit 1
}
installed() { dpkg-query -W -f '${Status}' matrix-conduit 2>/dev/null | grep -q 'ok installed'; }

# What a previous run left (it stopped half-way), or nothing; never
# someone's real installation.
remove_test_install() {
    if installed || [ -e "$data" ]; then
        as_root test -e "$marker" ||
            fail "matrix-conduit is installed here, or $data exists, and not by this test; leaving it alone"
        if installed; then as_root dpkg --purge matrix-conduit >/dev/null; fi
        as_root rm -rf "$data"
    fi
    if getent passwd matrix-conduit >/dev/null; then as_root userdel matrix-conduit; fi
    if getent group matrix-conduit >/dev/null; then as_root groupdel matrix-conduit; fi
}
remove_test_install

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then as_root kill -KILL "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

deb="$(bash debian/build-deb.sh --binary "$binary" --out "$work" --compress gzip)"
as_root env DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" > "$work/install.log"
as_root touch "$marker"
grep -q "Set server_name in $config" "$work/install.log" || fail "postinst did not say how to set the server name"

# Files, modes, the user.
[ -x /usr/bin/conduit ] || fail "no /usr/bin/conduit"
[ -f "$unit" ] || fail "no $unit"
getent passwd matrix-conduit >/dev/null || fail "no matrix-conduit user"
[ "$(stat -c '%U:%G %a' "$config")" = "root:matrix-conduit 640" ] || fail "$config: $(stat -c '%U:%G %a' "$config")"
[ "$(stat -c '%U:%G %a' "$data")" = "matrix-conduit:matrix-conduit 750" ] || fail "$data: $(stat -c '%U:%G %a' "$data")"
grep -qx '/etc/matrix-conduit/conduit.toml' /var/lib/dpkg/info/matrix-conduit.conffiles || fail "the config is no conffile"
/usr/bin/conduit -c "$config" check-config | grep -qx 'database_path = "/var/lib/matrix-conduit/database"' ||
    fail "the packaged config does not put the database in $data"

# The unit's command line, by hand: its user, its environment, its working
# directory, no new privileges and no capabilities, as systemd would. The
# port is free (0: the kernel picks; the log names it); registration is
# opened for the test through the environment.
exec_start="$(sed -n 's/^ExecStart=//p' "$unit")"
unit_env="$(sed -n 's/^Environment=//p' "$unit")"
[ -n "$exec_start" ] && [ -n "$unit_env" ] || fail "no ExecStart or Environment in $unit"
log="$work/server.log"
sudo_if_needed=()
[ "$(id -u)" -eq 0 ] || sudo_if_needed=(sudo)
(cd / && exec "${sudo_if_needed[@]}" setpriv --reuid=matrix-conduit --regid=matrix-conduit --init-groups \
    --no-new-privs --bounding-set=-all --inh-caps=-all \
    env $unit_env CONDUIT_PORT=0 CONDUIT_ALLOW_REGISTRATION=true $exec_start) 2>"$log" &
server_pid=$!
base=""
for _ in $(seq 1 120); do
    base="$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$log" | head -n 1)"
    [ -n "$base" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; fail "the server exited at start"; }
    sleep 0.5
done
[ -n "$base" ] || { cat "$log" >&2; fail "the server named no address within 60 s"; }
versions=""
for _ in $(seq 1 60); do
    versions="$(curl -fsS --max-time 5 "$base/_matrix/client/versions" 2>/dev/null)" && break
    sleep 0.5
done
echo "$versions" | grep -q '"versions"' || fail "no /versions from $base: $versions"

registered="$(curl -sS --max-time 30 -X POST "$base/_matrix/client/v3/register" \
    -H 'Content-Type: application/json' \
    -d '{"username": "packaged", "password": "a long password", "auth": {"type": "m.login.dummy"}}')"
echo "$registered" | grep -q '"user_id":"@packaged:localhost"' || fail "registration: $registered"
[ "$(stat -c %U "$data/database")" = matrix-conduit ] || fail "the database does not belong to matrix-conduit"

as_root kill -TERM "$server_pid"
stopped=""
for _ in $(seq 1 120); do
    if ! kill -0 "$server_pid" 2>/dev/null; then stopped=yes; break; fi
    sleep 0.5
done
[ -n "$stopped" ] || fail "the server did not stop within 60 s of SIGTERM"
wait "$server_pid" || fail "the server exited with status $? after SIGTERM"
server_pid=""
grep -q "database flushed" "$log" || fail "no clean shutdown in the log"

# The first admin account, as postinst says to make it (server stopped).
created="$(as_root runuser -u matrix-conduit -- /usr/bin/conduit -c "$config" admin users create admin --admin)"
echo "$created" | grep -q '^created @admin:localhost with password ' || fail "admin users create: $created"

# systemd-analyze verify reads the unit without a running systemd (it
# checks the syntax, that the binary exists, the sandboxing directives);
# it cannot run the sandbox itself, so the hardening is only checked as
# written, not as enforced.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
systemd-analyze verify --man=no "$unit"

# The Nix files: Debian's nix-bin parses them offline.
if ! command -v nix-instantiate >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin >/dev/null
fi
bash nix/check.sh

# Reinstalling keeps a changed config (a conffile) and the data.
echo "# changed by the packaging test" | as_root tee -a "$config" >/dev/null
as_root env DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$deb" >/dev/null
grep -q "changed by the packaging test" "$config" || fail "reinstalling replaced the changed config"
[ -d "$data/database" ] || fail "reinstalling lost the data"

# Purge: config gone, data kept (and said so).
as_root dpkg --purge matrix-conduit > "$work/purge.log" 2>&1
[ ! -e /etc/matrix-conduit ] || fail "purge left /etc/matrix-conduit"
[ ! -e /usr/bin/conduit ] || fail "purge left /usr/bin/conduit"
[ -d "$data/database" ] || fail "purge removed the data"
grep -q "the data stays in $data" "$work/purge.log" || fail "purge did not say where the data stays"

remove_test_install
echo "packaging test: the package installs, serves, stops cleanly and purges"

#!/usr/bin/env bash
# Builds the matrix-conduit .deb from a plain tree with dpkg-deb (no
# debhelper, no cargo-deb).
#
#   debian/build-deb.sh [--binary PATH] [--out DIR] [--compress xz|gzip|none]
#
# Without --binary it builds the release binary first. CI passes the debug
# binary it already built for the tests (--binary), so the package test
# costs no second, release-mode RocksDB build. The binary's architecture
# (amd64, arm64) is read from the ELF header, so an aarch64 cross build
# packages the same way. --compress gzip is for tests: xz (the default)
# takes most of a minute on a debug binary. Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="${CARGO_TARGET_DIR:-target}/debian"
compress=xz
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --compress) compress="$2"; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--out DIR] [--compress xz|gzip|none]" >&2; exit 2 ;;
    esac
done

if [ -z "$binary" ]; then
    cargo build --locked --release -p conduit-release --bin conduit >&2
    binary="${CARGO_TARGET_DIR:-target}/release/conduit"
fi
[ -x "$binary" ] || { echo "$0: no executable at $binary" >&2; exit 1; }

# "matrix-conduit (0.1.0-1) unstable; ..." -> 0.1.0-1
version="$(sed -n '1s/^matrix-conduit (\([^)]*\)).*/\1/p' debian/changelog)"
crate_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
if [ "${version%-*}" != "$crate_version" ]; then
    echo "$0: debian/changelog says $version, Cargo.toml $crate_version; add a changelog entry" >&2
    exit 1
fi
case "$(LC_ALL=C readelf -h "$binary" | sed -n 's/^ *Machine: *//p')" in
    *X86-64*) arch=amd64 ;;
    AArch64) arch=arm64 ;;
    *) echo "$0: $binary is for no architecture this script packages" >&2; exit 1 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants the package tree under debian/<package>.
root="$work/debian/matrix-conduit"
doc="$root/usr/share/doc/matrix-conduit"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/etc/matrix-conduit" \
    "$root/lib/systemd/system" "$doc"

# Release binaries come stripped (Cargo.toml); a debug one loses its debug
# information here (hundreds of MB), as Debian strips every binary.
strip --strip-unneeded -o "$root/usr/bin/conduit" "$binary" 2>/dev/null ||
    install -m 0755 "$binary" "$root/usr/bin/conduit"
chmod 0755 "$root/usr/bin/conduit"

# The example config with the package's paths. Each substitution must hit,
# so a reworded example fails here rather than shipping a wrong path.
config="$root/etc/matrix-conduit/conduit.toml"
{
    echo "# Installed by the matrix-conduit package and read by its systemd unit."
    echo "# Set server_name, then: systemctl restart matrix-conduit"
    echo "#"
    cat conduit.toml.example
} > "$config"
substitute() {
    grep -qF -- "$1" "$config" || { echo "$0: conduit.toml.example has no line '$1'" >&2; exit 1; }
    sed -i "s|$1|$2|g" "$config"
}
substitute 'database_path = "./conduit-data"' 'database_path = "/var/lib/matrix-conduit/database"'
substitute '#backup_directory = "/var/backups/matrix-conduit"' '#backup_directory = "/var/lib/matrix-conduit/backups"'
# Behind a reverse proxy an open registration is open to the world; the
# first account is made with `conduit admin users create` (postinst says how).
substitute 'allow_registration = true' 'allow_registration = false'
substitute '/etc/conduit/' '/etc/matrix-conduit/'
chmod 0640 "$config"

install -m 0644 debian/matrix-conduit.service "$root/lib/systemd/system/"
install -m 0644 debian/copyright "$doc/copyright"
gzip -9n < debian/changelog > "$doc/changelog.Debian.gz"
install -m 0644 README.md docs/deploying.md conduit.toml.example "$doc/"
for script in postinst prerm postrm; do
    install -m 0755 "debian/$script" "$root/DEBIAN/$script"
done
install -m 0644 debian/conffiles "$root/DEBIAN/conffiles"

# Depends from the libraries the binary links (libc6, libgcc-s1,
# libstdc++6); without dpkg-dev, or for another architecture, what it found
# for the amd64 build on Debian 12.
depends=""
if command -v dpkg-shlibdeps >/dev/null 2>&1 && [ "$arch" = "$(dpkg --print-architecture)" ]; then
    printf 'Source: matrix-conduit\n\nPackage: matrix-conduit\nArchitecture: any\n' > "$work/debian/control"
    depends="$(cd "$work" && dpkg-shlibdeps -O debian/matrix-conduit/usr/bin/conduit 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')"
fi
depends="${depends:-libc6 (>= 2.34), libgcc-s1 (>= 4.2), libstdc++6 (>= 12)}"
# dpkg-shlibdeps does not count the GLIBC_ABI_DT_RELR version that packed
# relocations (build.rs, release builds) require; glibc has it from 2.36.
# This also covers the fallback above.
if readelf -V "$root/usr/bin/conduit" 2>/dev/null | grep -q GLIBC_ABI_DT_RELR; then
    depends="$(printf '%s' "$depends" | sed -E 's/libc6 \(>= [0-9.]+\)/libc6 (>= 2.36)/')"
fi

(cd "$root" && find etc usr lib -type f ! -path 'etc/*' -exec md5sum {} + | sort -k 2) > "$root/DEBIAN/md5sums"
installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f 1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@INSTALLED_SIZE@/$installed_size/" debian/control.in > "$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/matrix-conduit_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >&2
echo "$deb"

#!/usr/bin/env bash
# Cross-builds the release binary for a 64-bit Raspberry Pi (Pi 3, 4, 5 on a
# 64-bit OS: aarch64 Linux with glibc) on a Debian x86_64 machine, with
# Debian's cross compilers and Rust's aarch64-unknown-linux-gnu target.
#
#   tools/cross/aarch64.sh [cargo build options...]
#
# Prints the binary's path. The first build compiles RocksDB's C++ for
# aarch64: 15 minutes or more on 2 cores. Its own target directory keeps the
# x86_64 builds' cache intact. Then: tools/cross/smoke.sh BINARY, and
# debian/build-deb.sh --binary BINARY for an arm64 package.
#
# RocksDB is built for generic ARMv8-A (librocksdb-sys warns "WITHOUT CRC"):
# it runs on the Pi 4 (Cortex-A72, no crypto extension) and the Pi 5 alike.
# RUSTFLAGS="-Ctarget-cpu=cortex-a76" would tune it for the Pi 5 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/build-deps   # as_root; libclang-dev for the bindings

target=aarch64-unknown-linux-gnu
packages=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if command -v rustup >/dev/null 2>&1; then
    rustup target add "$target" >&2
fi

# cc (RocksDB, LZ4, Zstandard, ring) and the final link use the cross
# toolchain; bindgen's clang reads the aarch64 C headers from the sysroot.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
# `cargo test --target ...` and `cargo run` then run under emulation.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CARGO_TARGET_DIR="${CONDUIT_AARCH64_TARGET_DIR:-$HOME/.cache/conduit-target-aarch64}"

cargo build --locked --release --target "$target" -p conduit-release --bin conduit "$@" >&2
echo "$CARGO_TARGET_DIR/$target/release/conduit"

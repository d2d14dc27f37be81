# Conduit built with nixpkgs' RocksDB where its version fits the Rust
# bindings (librocksdb-sys, pinned in Cargo.lock), else with the copy the
# crate bundles.
{
  lib,
  rustPlatform,
  rocksdb,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
  cargoLock = lib.importTOML ../Cargo.lock;
  # "0.19.0+11.8.1": the crate's version, then the RocksDB it was made for.
  librocksdbSys = lib.findFirst (p: p.name == "librocksdb-sys") null cargoLock.package;
  wantedRocksdb = lib.last (lib.splitString "+" librocksdbSys.version);
  # The C API only grows within a major version; the bindings are made at
  # build time from the headers (bindgen-runtime), so a newer minor works.
  systemRocksdbFits =
    lib.versions.major rocksdb.version == lib.versions.major wantedRocksdb
    && lib.versionAtLeast rocksdb.version wantedRocksdb;
  useSystemRocksdb = lib.warnIfNot systemRocksdbFits
    "matrix-conduit: nixpkgs has RocksDB ${rocksdb.version}, the bindings want ${wantedRocksdb}; building the bundled copy"
    systemRocksdbFits;
in
rustPlatform.buildRustPackage {
  pname = "matrix-conduit";
  inherit (cargoToml.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../build.rs
      ../release
      ../src
      ../tests
      ../conduit.toml.example
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;
  # release/ links the binary at opt-level 3 over the server's code at "s"
  # (release/Cargo.toml says why).
  cargoBuildFlags = [
    "-p"
    "conduit-release"
    "--bin"
    "conduit"
  ];

  # libclang for the RocksDB bindings (LIBCLANG_PATH, the C headers).
  nativeBuildInputs = [ rustPlatform.bindgenHook ];
  buildInputs = lib.optionals useSystemRocksdb [ rocksdb ];

  env = lib.optionalAttrs useSystemRocksdb {
    ROCKSDB_INCLUDE_DIR = "${lib.getDev rocksdb}/include";
    ROCKSDB_LIB_DIR = "${lib.getLib rocksdb}/lib";
    # Linked as a shared library (ROCKSDB_STATIC unset): the store keeps
    # one RocksDB for every package that uses it.
  };

  # The test suite starts the server on loopback ports and runs for
  # minutes; it runs in the repository's CI (scripts/test), not here.
  doCheck = false;

  meta = {
    description = cargoToml.package.description;
    license = lib.licenses.asl20;
    mainProgram = "conduit";
    platforms = lib.platforms.linux;
  };
}

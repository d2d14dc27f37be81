#!/usr/bin/env bash
# Checks the Nix files offline: every .nix file here parses, and the flake's
# outputs function and the package's and module's arguments are what Nix
# expects. Evaluating them against nixpkgs (nix flake check) needs nixpkgs,
# which needs the network: not done here.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v nix-instantiate >/dev/null 2>&1; then
    echo "nix/check.sh: nix-instantiate not found (Debian: apt-get install nix-bin)" >&2
    exit 1
fi

status=0
for file in *.nix; do
    if nix-instantiate --parse "$file" >/dev/null; then
        echo "parses: nix/$file"
    else
        echo "does not parse: nix/$file" >&2
        status=1
    fi
done
[ "$status" -eq 0 ] || exit "$status"

# Shapes, without nixpkgs: the flake is an attribute set with inputs and an
# outputs function; the package and the module are functions of the
# arguments callPackage and the module system give.
nix-instantiate --eval --strict --expr '
  let
    flake = import ./flake.nix;
    args = f: builtins.attrNames (builtins.functionArgs f);
  in
  assert builtins.isString flake.description;
  assert flake.inputs ? nixpkgs;
  assert args flake.outputs == [ "nixpkgs" "self" ];
  assert args (import ./package.nix) == [ "lib" "rocksdb" "rustPlatform" ];
  assert args (import ./module.nix) == [ "config" "lib" "pkgs" ];
  "shapes: flake, package, module"
' 2>&1 | tr -d '"'

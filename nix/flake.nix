# Conduit for Nix: the package and a NixOS module.
#
#   nix build 'git+file:///path/to/conduit?dir=nix'
#   nixosModules.default: services.matrix-conduit (see docs/deploying.md)
#
# The flake lives in nix/ and builds the repository around it: use it
# through a git URL with ?dir=nix (a path: URL of nix/ alone would leave
# the Rust sources outside the flake).
{
  description = "Conduit, a Matrix homeserver in one binary with an embedded RocksDB";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        matrix-conduit = pkgs.callPackage ./package.nix { };
        default = matrix-conduit;
      });

      # Its default package is built with the system's own nixpkgs
      # (pkgs.callPackage ./package.nix), for the system's architecture.
      nixosModules.default = ./module.nix;

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}

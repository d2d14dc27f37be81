# NixOS module: services.matrix-conduit, with the hardening of the Debian
# package's unit (debian/matrix-conduit.service).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.matrix-conduit;
  format = pkgs.formats.toml { };
  configFile = format.generate "conduit.toml" cfg.settings;
  dataDir = "/var/lib/matrix-conduit";
in
{
  # nixpkgs has a module of the same name for upstream Conduit.
  disabledModules = [ "services/matrix/conduit.nix" ];

  options.services.matrix-conduit = {
    enable = lib.mkEnableOption "Conduit, a Matrix homeserver";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The Conduit package to run.";
    };

    settings = lib.mkOption {
      default = { };
      description = ''
        The config file, rendered to TOML: every key of conduit.toml.example
        under `global`. `conduit check-config` names a wrong key.
      '';
      type = lib.types.submodule {
        freeformType = format.type;
        options.global = lib.mkOption {
          default = { };
          description = "The `[global]` table.";
          type = lib.types.submodule {
            freeformType = format.type;
            options = {
              server_name = lib.mkOption {
                type = lib.types.str;
                example = "example.org";
                description = "The name in every user ID; it cannot change once users exist.";
              };
              database_path = lib.mkOption {
                type = lib.types.str;
                default = "${dataDir}/database";
                description = "The database; media go in its media/. Must be under ${dataDir}, the unit's only writable path.";
              };
              address = lib.mkOption {
                type = lib.types.str;
                default = "127.0.0.1";
                description = "Where to listen; a reverse proxy on this machine fronts it.";
              };
              port = lib.mkOption {
                type = lib.types.port;
                default = 6167;
                description = "The port to listen on.";
              };
            };
          };
        };
      };
    };

    memoryMax = lib.mkOption {
      type = lib.types.str;
      default = "512M";
      description = ''
        The unit's MemoryMax: the server is killed (and restarted) above it.
        Keep it about twice `memory_budget_mb` (256 MB by default).
      '';
    };

    memoryHigh = lib.mkOption {
      type = lib.types.str;
      default = "320M";
      description = "The unit's MemoryHigh: the kernel reclaims above it. A little above `memory_budget_mb`.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.hasPrefix "${dataDir}/" cfg.settings.global.database_path;
        message = "services.matrix-conduit.settings.global.database_path must be under ${dataDir}";
      }
    ];

    users.users.matrix-conduit = {
      isSystemUser = true;
      group = "matrix-conduit";
      home = dataDir;
      description = "Conduit Matrix homeserver";
    };
    users.groups.matrix-conduit = { };

    environment.systemPackages = [ cfg.package ];

    systemd.services.matrix-conduit = {
      description = "Conduit Matrix homeserver";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment.CONDUIT_CONFIG = configFile;
      restartTriggers = [ configFile ];
      serviceConfig = {
        # READY=1 once listening, WATCHDOG=1 every WatchdogSec/2.
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = 60;
        User = "matrix-conduit";
        Group = "matrix-conduit";
        ExecStart = lib.getExe cfg.package;
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStartSec = "10min";
        TimeoutStopSec = 60;

        StateDirectory = "matrix-conduit";
        StateDirectoryMode = "0750";
        ReadWritePaths = [ dataDir ];
        UMask = "0027";
        LimitNOFILE = 16384;
        MemoryHigh = cfg.memoryHigh;
        MemoryMax = cfg.memoryMax;

        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = true;
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}

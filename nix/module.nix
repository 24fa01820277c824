# The NixOS module: programs.hrun. Installs hrun (its man page, its bash, zsh and fish
# completions and its editor annotations come with the package into the system's
# profile), makes the state directory and the directory the agent journals in when
# this host is changed from another (docs/hosts.md), and, for a controller that logs in
# as a user, the one sudoers rule that lets that user start the agent as root.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.programs.hrun;
in
{
  options.programs.hrun = {
    enable = lib.mkEnableOption "hrun, journaled and reversible server changes in Lua";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.hrun;
      defaultText = lib.literalExpression "pkgs.hrun";
      description = "The hrun package (the flake's module sets the flake's own).";
    };

    stateDir = lib.mkOption {
      type = lib.types.path;
      default = "/var/lib/hrun";
      description = ''
        Where hrun run as root keeps its journal, stashes and locks (root's HRUN_STATE_DIR
        in its login shells when not the default). Made 0700, root's.
      '';
    };

    agentDir = lib.mkOption {
      type = lib.types.path;
      default = "/var/lib/hrun/agent";
      description = ''
        Where the agent journals the writes a controller on another machine makes here
        (the host's agent_dir in the controller's playbook or inventory; the same default).
        Made 0700, root's.
      '';
    };

    sudoUsers = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "deploy" ];
      description = ''
        Users a controller logs in as with `sudo = true`: each may start the agent as
        root, and nothing else, without a password (one rule: never a prompt mid-run).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    environment.pathsToLink = [ "/share/hrun" ];
    # root's alone: another user's runs keep their own state directory (~/.local/state/hrun)
    environment.extraInit = lib.mkIf (cfg.stateDir != "/var/lib/hrun") ''
      if [ "$(id -u)" = 0 ]; then export HRUN_STATE_DIR=${lib.escapeShellArg cfg.stateDir}; fi
    '';

    systemd.tmpfiles.rules = [
      "d ${cfg.stateDir} 0700 root root -"
      "d ${cfg.agentDir} 0700 root root -"
    ];

    security.sudo.extraRules = lib.mkIf (cfg.sudoUsers != [ ]) [
      {
        users = cfg.sudoUsers;
        runAs = "root";
        commands = [
          {
            command = "/run/current-system/sw/bin/hrun agent --dir ${cfg.agentDir}";
            options = [ "NOPASSWD" ];
          }
        ];
      }
    ];
  };
}

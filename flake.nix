{
  description = "hrun: journaled, checked, reversible server changes, written in Lua";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

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
        hrun = pkgs.callPackage ./package.nix { };
        default = hrun;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.hrun}/bin/hrun";
        };
      });

      overlays.default = final: _prev: { hrun = final.callPackage ./package.nix { }; };

      # programs.hrun: the package (with its man page and completions), the state
      # directory and the agent's directory; nix/module.nix
      nixosModules.default =
        { pkgs, lib, ... }:
        {
          imports = [ ./nix/module.nix ];
          programs.hrun.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.hrun;
        };
    };
}
